#!/usr/bin/env python3
"""Points a rendered MutatingWebhookConfiguration at a webhook on loopback, for e2e tests.

Every webhook's clientConfig.service is replaced by
    url: https://HOST:PORT<path of the service reference>
and caBundle is set to the given CA, so a real kube-apiserver (which runs no Service proxy
here) calls the injector running on the same machine. The cert-manager inject-ca-from
annotation is dropped. Everything else (rules, selectors, policies) is kept as rendered.

Usage: to_loopback.py WEBHOOK_YAML --port PORT (--ca-bundle B64 | --ca-file PEM)
                      [--host 127.0.0.1] [-o OUT]   (default: stdout)
Needs PyYAML (tests/chart/tools.sh installs it into .tools/venv).
Note: API servers before 1.21 do not set the kubernetes.io/metadata.name namespace label,
so the exclusion by name does not apply there; opt-in selection still does.
"""
import argparse
import base64
import sys

import yaml


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("webhook_yaml")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--ca-bundle", help="base64-encoded PEM CA bundle")
    g.add_argument("--ca-file", help="PEM CA file")
    ap.add_argument("-o", "--output")
    a = ap.parse_args()
    ca = a.ca_bundle or base64.b64encode(open(a.ca_file, "rb").read()).decode()
    if b"-----BEGIN CERTIFICATE-----" not in base64.b64decode(ca):
        sys.exit("to_loopback.py: the CA bundle is not base64 PEM")
    host = f"[{a.host}]" if ":" in a.host else a.host
    docs = [d for d in yaml.safe_load_all(open(a.webhook_yaml)) if d]
    found = 0
    for d in docs:
        if d.get("kind") != "MutatingWebhookConfiguration":
            continue
        found += 1
        (d["metadata"].get("annotations") or {}).pop("cert-manager.io/inject-ca-from", None)
        for h in d["webhooks"]:
            svc = h["clientConfig"].get("service") or {}
            path = svc.get("path", "/")
            h["clientConfig"] = {"url": f"https://{host}:{a.port}{path}", "caBundle": ca}
    if not found:
        sys.exit("to_loopback.py: no MutatingWebhookConfiguration in " + a.webhook_yaml)
    out = open(a.output, "w") if a.output else sys.stdout
    yaml.safe_dump_all(docs, out, sort_keys=False)


if __name__ == "__main__":
    main()
