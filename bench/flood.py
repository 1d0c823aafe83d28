#!/usr/bin/env python3
"""A hostile caller: floods the webhook port from one address (issue 15).

Holds, from --source (another loopback address than the API server's):
  --trickle N   TLS connections, each sending a request that declares --body-bytes (7 MB) or,
                with --chunked, no length, and trickling its body at --rate bytes/s per
                connection; a connection the server closes or answers is replaced at once;
  --half-open M TCP connections that send only the start of a TLS ClientHello and then
                nothing; replaced when the server closes them.
Runs for --duration seconds, then prints one JSON object: connections opened, requests
answered by status, connections closed by the server, bytes sent. Standard library only.
"""

import argparse
import asyncio
import json
import ssl
import time

# The first bytes of a TLS record carrying a ClientHello: a handshake that never completes.
PARTIAL_CLIENT_HELLO = bytes.fromhex("160301020001")


class Stats:
    def __init__(self):
        self.opened = 0
        self.refused_connect = 0
        self.closed_by_server = 0
        self.answered = {}
        self.bytes_sent = 0

    def as_json(self):
        return {
            "connections_opened": self.opened,
            "connect_failures": self.refused_connect,
            "closed_by_server": self.closed_by_server,
            "answered": self.answered,
            "bytes_sent": self.bytes_sent,
        }


async def trickle(args, context, stats, deadline):
    chunk = max(1, int(args.rate * args.interval))
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(args.host, args.port, ssl=context,
                                        local_addr=(args.source, 0),
                                        server_hostname=args.server_name),
                timeout=10)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            stats.refused_connect += 1
            await asyncio.sleep(0.05)
            continue
        stats.opened += 1
        if args.chunked:
            head = "POST /mutate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        else:
            head = f"POST /mutate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {args.body_bytes}\r\n\r\n"
        sent = 0
        try:
            writer.write(head.encode())
            await writer.drain()
            response = asyncio.ensure_future(reader.read(512))
            while sent < args.body_bytes and time.monotonic() < deadline:
                n = min(chunk, args.body_bytes - sent)
                data = b"[" * n
                writer.write(f"{n:x}\r\n".encode() + data + b"\r\n" if args.chunked else data)
                await writer.drain()
                sent += n
                stats.bytes_sent += n
                done, _ = await asyncio.wait({response}, timeout=args.interval)
                if done:
                    break
            if response.done():
                line = response.result().split(b"\r\n", 1)[0].decode(errors="replace")
                if line:
                    status = line.split(" ")[1] if " " in line else line
                    stats.answered[status] = stats.answered.get(status, 0) + 1
                else:
                    stats.closed_by_server += 1
            else:
                response.cancel()
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            stats.closed_by_server += 1
        finally:
            writer.close()


async def half_open(args, stats, deadline):
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(args.host, args.port, local_addr=(args.source, 0)), timeout=10)
        except (OSError, asyncio.TimeoutError):
            stats.refused_connect += 1
            await asyncio.sleep(0.05)
            continue
        stats.opened += 1
        try:
            writer.write(PARTIAL_CLIENT_HELLO)
            await writer.drain()
            left = deadline - time.monotonic()
            if left > 0:
                data = await asyncio.wait_for(reader.read(1), timeout=left)
                if not data:
                    stats.closed_by_server += 1
        except asyncio.TimeoutError:
            pass
        except OSError:
            stats.closed_by_server += 1
        finally:
            writer.close()


async def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server-name", default="localhost")
    parser.add_argument("--ca", required=True, help="CA of the serving certificate")
    parser.add_argument("--source", default="127.0.0.2", help="local address to flood from")
    parser.add_argument("--trickle", type=int, default=300)
    parser.add_argument("--half-open", type=int, default=200)
    parser.add_argument("--body-bytes", type=int, default=7 * 1000 * 1000)
    parser.add_argument("--chunked", action="store_true")
    parser.add_argument("--rate", type=float, default=64 * 1024, help="bytes/s per trickling connection")
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("--duration", type=float, default=60)
    args = parser.parse_args()
    context = ssl.create_default_context(cafile=args.ca)
    context.set_alpn_protocols(["http/1.1"])
    stats = Stats()
    deadline = time.monotonic() + args.duration
    tasks = [trickle(args, context, stats, deadline) for _ in range(args.trickle)]
    tasks += [half_open(args, stats, deadline) for _ in range(args.half_open)]
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps(stats.as_json()))


if __name__ == "__main__":
    asyncio.run(main())
