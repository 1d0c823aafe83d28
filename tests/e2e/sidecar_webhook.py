#!/usr/bin/env python3
"""A second mutating webhook for the reinvocation scenario (standard library only).

POST /add-sidecar: adds a container `e2e-sidecar` (image SIDECAR_IMAGE, default
ghcr.io/acme/sidecar:1) to a Pod that lacks it, as a service mesh injector would. Registered in a
MutatingWebhookConfiguration whose name sorts after the injector's, it runs after the injector;
the API server then reinvokes the injector (reinvocationPolicy: IfNeeded), which must add the
sidecar's secret without duplicating the ones it added in the first round.

Usage: sidecar_webhook.py --port PORT --cert TLS_CRT --key TLS_KEY
"""
import argparse
import base64
import json
import os
import ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

IMAGE = os.environ.get("SIDECAR_IMAGE", "ghcr.io/acme/sidecar:1")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 (http.server naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        review = json.loads(body)
        req = review["request"]
        pod = req.get("object") or {}
        containers = (pod.get("spec") or {}).get("containers") or []
        resp = {"uid": req["uid"], "allowed": True}
        if not any(c.get("name") == "e2e-sidecar" for c in containers):
            patch = [{"op": "add", "path": "/spec/containers/-",
                      "value": {"name": "e2e-sidecar", "image": IMAGE}}]
            resp["patchType"] = "JSONPatch"
            resp["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
        out = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                          "response": resp}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, fmt, *args):
        print("sidecar-webhook: " + fmt % args, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    a = ap.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.daemon_threads = True
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print(f"sidecar-webhook: listening on https://127.0.0.1:{a.port}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
