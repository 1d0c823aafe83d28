#!/usr/bin/env python3
"""Fills a kube-apiserver with many namespaces and Secrets, fast (standard library only).

Creates NAMESPACES namespaces `scale-00000`... (every ENABLED_EVERY-th labelled
`pullsecret-injector/inject=enabled`), then in each: DOCKER docker config Secrets (alternately
kubernetes.io/dockerconfigjson and kubernetes.io/dockercfg; the first is `regcred-0`) and OTHER
other Secrets (Opaque and kubernetes.io/tls, with labels and annotations). POSTs run from
--workers threads, each on its own keep-alive HTTPS connection; namespaces are all created
before their Secrets. An object that already exists (HTTP 409) counts as done, so a run can be
repeated. Prints one JSON line: counts, errors, seconds, objects per second.
"""

import argparse
import base64
import http.client
import json
import queue
import ssl
import sys
import threading
import time


def docker_config(i, j):
    auth = base64.b64encode(f"bench-{i}-{j}:password-{i}-{j}".encode()).decode()
    server = f"registry-{j}.example.com"
    if j % 2 == 0:
        return "kubernetes.io/dockerconfigjson", ".dockerconfigjson", json.dumps(
            {"auths": {server: {"username": f"bench-{i}-{j}", "password": f"password-{i}-{j}", "auth": auth}}})
    return "kubernetes.io/dockercfg", ".dockercfg", json.dumps({server: {"auth": auth, "email": "bench@example.com"}})


def objects(args):
    """(path, body) for every namespace, then for every Secret."""
    namespaces, secrets = [], []
    for i in range(args.namespaces):
        ns = f"{args.prefix}{i:05d}"
        labels = {"pullsecret-injector/inject": "enabled"} if i % args.enabled_every == 0 else {}
        labels["team"] = f"team-{i % 17}"
        namespaces.append(("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                  "metadata": {"name": ns, "labels": labels}}))
        path = f"/api/v1/namespaces/{ns}/secrets"
        for j in range(args.docker):
            type_, key, value = docker_config(i, j)
            secrets.append((path, {
                "apiVersion": "v1", "kind": "Secret", "type": type_,
                "metadata": {"name": f"regcred-{j}", "labels": {"app": "registry-credentials"},
                             "annotations": {"owner": f"team-{i % 17}"}},
                "data": {key: base64.b64encode(value.encode()).decode()}}))
        for j in range(args.other):
            meta = {"name": f"app-{j}", "labels": {"app": f"app-{j}"}, "annotations": {"owner": f"team-{i % 17}"}}
            if j % 4 == 3:
                body = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": meta,
                        "data": {"tls.crt": base64.b64encode(b"-----BEGIN CERTIFICATE-----\n" + b"A" * 600).decode(),
                                 "tls.key": base64.b64encode(b"-----BEGIN PRIVATE KEY-----\n" + b"B" * 200).decode()}}
            else:
                body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta,
                        "data": {"token": base64.b64encode(f"value-{i}-{j}".encode() * 8).decode()}}
            secrets.append((path, body))
    return namespaces, secrets


def run(args, context, items):
    """POSTs every item from args.workers threads; returns (created, existed, errors)."""
    work = queue.Queue()
    for item in items:
        work.put(item)
    counts = {"created": 0, "existed": 0, "errors": 0}
    lock = threading.Lock()
    host, port = args.server.removeprefix("https://").split(":")
    headers = {"Authorization": f"Bearer {args.token}", "Content-Type": "application/json",
               "Accept": "application/json"}

    def worker():
        conn = None
        while True:
            try:
                path, body = work.get_nowait()
            except queue.Empty:
                break
            data = json.dumps(body)
            status = None
            for _ in range(3):
                try:
                    if conn is None:
                        conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=60)
                    conn.request("POST", path, body=data, headers=headers)
                    response = conn.getresponse()
                    response.read()
                    status = response.status
                    if status in (429, 500, 503):
                        time.sleep(0.2)
                        continue
                    break
                except (http.client.HTTPException, OSError):
                    if conn is not None:
                        conn.close()
                    conn = None
            key = "created" if status == 201 else "existed" if status == 409 else "errors"
            if key == "errors":
                sys.stderr.write(f"POST {path}: HTTP {status}\n")
            with lock:
                counts[key] += 1
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", required=True, help="https://127.0.0.1:PORT")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--namespaces", type=int, default=2000)
    parser.add_argument("--docker", type=int, default=1, help="docker config Secrets per namespace")
    parser.add_argument("--other", type=int, default=4, help="other Secrets per namespace")
    parser.add_argument("--enabled-every", type=int, default=2)
    parser.add_argument("--prefix", default="scale-")
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args()
    context = ssl.create_default_context(cafile=args.ca)
    namespaces, secrets = objects(args)
    started = time.monotonic()
    ns_counts = run(args, context, namespaces)
    ns_done = time.monotonic()
    secret_counts = run(args, context, secrets)
    elapsed = time.monotonic() - started
    print(json.dumps({
        "namespaces": ns_counts, "secrets": secret_counts,
        "namespace_s": round(ns_done - started, 1), "total_s": round(elapsed, 1),
        "objects_per_s": round((len(namespaces) + len(secrets)) / elapsed, 1) if elapsed else 0,
    }))
    sys.exit(1 if ns_counts["errors"] or secret_counts["errors"] else 0)


if __name__ == "__main__":
    main()
