#!/usr/bin/env python3
"""Creates Pods through a real kube-apiserver and measures what each create costs.

Two ways to drive it (standard library only, one keep-alive HTTPS connection per worker):

  closed loop:  --clients N --duration S   N workers, each creating Pods back to back
  open loop:    --rate R --duration S      R creates a second on a fixed schedule; latency is
                                           measured from the scheduled time, so a stall is
                                           not hidden by the client waiting (coordinated
                                           omission)

Every created Pod is checked: with --expect-secret NAME it must come back from the API server
with NAME in spec.imagePullSecrets (a Pod admitted without it is counted as missing). Prints
one JSON object: count, errors, missing, latency mean/p50/p90/p99/max in ms, achieved rate.
"""

import argparse
import http.client
import json
import ssl
import sys
import threading
import time


def percentile(sorted_values, q):
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[index]


class Worker:
    def __init__(self, args, context, run=""):
        self.args = args
        self.context = context
        self.conn = None
        self.run = run

    def connect(self):
        host, port = self.args.server.removeprefix("https://").split(":")
        self.conn = http.client.HTTPSConnection(host, int(port), context=self.context, timeout=30)

    def create(self, index):
        """One Pod create: (ok, latency seconds, has the expected secret)."""
        # generateName draws 5 random characters; Kubernetes before 1.30 answers a collision
        # with an existing Pod with HTTP 500 ServerTimeout instead of drawing again, which at
        # tens of thousands of Pods is a failed create now and then. --unique-names avoids it.
        if self.args.unique_names:
            naming = {"name": f"{self.args.prefix}{self.run}-{index}"}
        else:
            naming = {"generateName": self.args.prefix}
        body = json.dumps({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {**naming, "labels": {"bench": "podload"}},
            "spec": {"containers": [{"name": "c", "image": self.args.image}]},
        })
        path = f"/api/v1/namespaces/{self.args.namespace}/pods"
        headers = {"Authorization": f"Bearer {self.args.token}", "Content-Type": "application/json",
                   "Accept": "application/json"}
        for attempt in range(2):
            if self.conn is None:
                self.connect()
            try:
                self.conn.request("POST", path, body=body, headers=headers)
                response = self.conn.getresponse()
                data = response.read()
                break
            except (http.client.HTTPException, OSError):
                # A connection the API server closed: the client reconnects (not a failed create).
                self.conn.close()
                self.conn = None
                if attempt == 1:
                    return False, False
        if response.status != 201:
            sys.stderr.write(f"create {index}: HTTP {response.status}: {data[:200]!r}\n")
            return False, False
        pod = json.loads(data)
        names = [s.get("name") for s in (pod.get("spec", {}).get("imagePullSecrets") or [])]
        return True, (self.args.expect_secret in names) if self.args.expect_secret else True


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", required=True, help="https://127.0.0.1:PORT")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--image", default="nginx:1.27")
    parser.add_argument("--prefix", default="load-")
    parser.add_argument("--expect-secret", default="")
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--clients", type=int, default=0, help="closed loop: concurrent workers")
    parser.add_argument("--rate", type=float, default=0, help="open loop: creates per second")
    parser.add_argument("--workers", type=int, default=16, help="open loop: worker pool size")
    parser.add_argument("--unique-names", action="store_true",
                        help="name Pods PREFIX<run>-<worker>-<n> instead of using generateName")
    args = parser.parse_args()
    if (args.clients > 0) == (args.rate > 0):
        parser.error("give exactly one of --clients and --rate")

    context = ssl.create_default_context(cafile=args.ca)
    lock = threading.Lock()
    latencies, errors, missing = [], [0], [0]
    started = time.monotonic()
    deadline = started + args.duration

    def record(ok, has_secret, latency):
        with lock:
            if ok:
                latencies.append(latency)
                if not has_secret:
                    missing[0] += 1
            else:
                errors[0] += 1

    run_id = format(int(time.time() * 1000) % 100000000, "x")

    def closed_loop(number):
        worker = Worker(args, context, f"{run_id}-{number}")
        i = 0
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            ok, has = worker.create(i)
            record(ok, has, time.monotonic() - t0)
            i += 1

    schedule = []
    if args.rate > 0:
        total = int(args.duration * args.rate)
        schedule = [started + i / args.rate for i in range(total)]
    next_slot = [0]

    def open_loop(number):
        worker = Worker(args, context, f"{run_id}-{number}")
        while True:
            with lock:
                if next_slot[0] >= len(schedule):
                    return
                slot = next_slot[0]
                next_slot[0] += 1
            due = schedule[slot]
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            ok, has = worker.create(slot)
            record(ok, has, time.monotonic() - due)

    threads = [threading.Thread(target=closed_loop if args.clients else open_loop, args=(number,))
               for number in range(args.clients or args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    values = sorted(latencies)
    ms = lambda s: round(s * 1000, 2)
    print(json.dumps({
        "mode": "closed" if args.clients else "open",
        "clients": args.clients, "rate": args.rate, "duration_s": round(elapsed, 1),
        "count": len(values), "errors": errors[0], "missing": missing[0],
        "achieved_per_s": round(len(values) / elapsed, 1) if elapsed else 0,
        "mean_ms": ms(sum(values) / len(values)) if values else 0,
        "p50_ms": ms(percentile(values, 0.50)), "p90_ms": ms(percentile(values, 0.90)),
        "p99_ms": ms(percentile(values, 0.99)), "max_ms": ms(values[-1]) if values else 0,
    }))


if __name__ == "__main__":
    main()
