#!/usr/bin/env python3
"""Runs the real binary the way the chart runs it (optional step of run.sh).

Usage: binary_smoke.py BINARY RENDER_DIR SMOKE_DIR
  RENDER_DIR: run.sh's renders (<case>@<version>.yaml); every rendered config.yaml must pass
              `pullsecret-injector check-config`.
              Every distinct args list of a rendered controller Deployment must parse:
              `pullsecret-injector <args> --help` exits 0 (clap rejects an unknown flag or
              subcommand before it gets to --help). Skipped, with a NOTE, while the binary
              has no `controller` subcommand.
  SMOKE_DIR:  render.sh output of a standalone, tls.source=helm values file. The Deployment's
              exact args are run, with /etc/pullsecret-injector/ mapped to files in SMOKE_DIR
              and the listeners moved to free loopback ports: /readyz must turn 200, the
              Helm-generated certificate must verify for the Service DNS name, POST /mutate
              must answer an AdmissionReview, and SIGTERM must exit 0 within the grace period.
Prints PASS/FAIL (and NOTE) lines; exits 1 on any failure.
"""
import base64
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

import yaml

failures = 0


def result(ok, msg, detail=""):
    global failures
    print(("PASS " if ok else "FAIL ") + msg)
    if not ok:
        failures += 1
        for line in str(detail).splitlines()[:20]:
            print("       " + line)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_configs(binary, render_dir):
    for fn in sorted(os.listdir(render_dir)):
        if "@" not in fn or not fn.endswith(".yaml"):
            continue
        docs = [d for d in yaml.safe_load_all(open(os.path.join(render_dir, fn))) if d]
        cms = [d for d in docs if d["kind"] == "ConfigMap" and "config.yaml" in (d.get("data") or {})]
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write(cms[0]["data"]["config.yaml"])
            f.flush()
            r = subprocess.run([binary, "check-config", "--config", f.name], capture_output=True, text=True, timeout=30)
        result(r.returncode == 0, f"check-config accepts the rendered config.yaml of {fn[:-5]}", r.stdout + r.stderr)


def check_controller_args(binary, render_dir):
    """The controller Deployment's args against the binary's own parser."""
    seen = {}
    for fn in sorted(os.listdir(render_dir)):
        if "@" not in fn or not fn.endswith(".yaml"):
            continue
        for d in yaml.safe_load_all(open(os.path.join(render_dir, fn))):
            if d and d["kind"] == "Deployment":
                (ctr,) = d["spec"]["template"]["spec"]["containers"]
                if ctr["args"][0] == "controller":
                    seen.setdefault(tuple(ctr["args"]), fn[:-5])
    result(bool(seen), f"the renders hold controller Deployments ({len(seen)} distinct args lists)")
    r = subprocess.run([binary, "controller", "--help"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        # TODO(merge, issue 16): once `controller` is in the binary this runs by itself; the
        # NOTE must then be gone from run.sh's output.
        print("NOTE controller args not checked: this binary has no `controller` subcommand "
              f"(`controller --help` exit {r.returncode}); each rendered args list will be run "
              "as `pullsecret-injector <args> --help` once it has")
        return
    for args, case in seen.items():
        r = subprocess.run([binary, *args, "--help"], capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, POD_NAMESPACE="pullsecret-injector", POD_NAME="smoke-0"))
        result(r.returncode == 0, f"controller accepts the rendered args of {case}: {' '.join(args)}", r.stdout + r.stderr)


def smoke(binary, smoke_dir):
    docs = [d for d in yaml.safe_load_all(open(os.path.join(smoke_dir, "all.yaml"))) if d]
    dep = next(d for d in docs if d["kind"] == "Deployment")
    svc = next(d for d in docs if d["kind"] == "Service")
    pod = dep["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    etc = os.path.join(smoke_dir, "etc")
    os.makedirs(os.path.join(etc, "tls"), exist_ok=True)
    for src, dst in (("config.yaml", "config.yaml"), ("tls/tls.crt", "tls/tls.crt"), ("tls/tls.key", "tls/tls.key")):
        with open(os.path.join(smoke_dir, src)) as i, open(os.path.join(etc, dst), "w") as o:
            o.write(i.read())
    port, admin = free_port(), free_port()
    args = []
    for a in ctr["args"]:
        a = a.replace("/etc/pullsecret-injector", etc)
        a = {"0.0.0.0:8443": f"127.0.0.1:{port}", "0.0.0.0:8080": f"127.0.0.1:{admin}"}.get(a, a)
        args.append(a)
    env = dict(os.environ, POD_NAMESPACE=dep["metadata"]["namespace"])
    log = open(os.path.join(smoke_dir, "serve.log"), "w")
    proc = subprocess.Popen([binary, *args], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        ready = False
        deadline = time.time() + 20
        while time.time() < deadline and proc.poll() is None:
            try:
                c = http.client.HTTPConnection("127.0.0.1", admin, timeout=1)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    ready = True
                    break
            except OSError:
                pass
            time.sleep(0.2)
        result(ready, "serve with the chart's args becomes ready (/readyz 200)", open(log.name).read())
        if not ready:
            return
        c = http.client.HTTPConnection("127.0.0.1", admin, timeout=2)
        c.request("GET", "/livez")
        result(c.getresponse().status == 200, "/livez 200")
        # TLS: the Helm-generated certificate, verified against the caBundle, for svc.ns.svc.
        ctx = ssl.create_default_context(cadata=open(os.path.join(smoke_dir, "tls", "ca.crt")).read())
        host = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc"
        review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "smoke-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"}, "operation": "CREATE",
            "namespace": "team-a", "userInfo": {"username": "smoke"},
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "team-a"},
                       "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=5)
            tls = ctx.wrap_socket(raw, server_hostname=host)
            c = http.client.HTTPSConnection(host, port, context=ctx, timeout=5)
            c.sock = tls
            c.request("POST", "/mutate", body=json.dumps(review), headers={"Content-Type": "application/json"})
            r = c.getresponse()
            body = json.loads(r.read())
            resp = body.get("response", {})
            patch = json.loads(base64.b64decode(resp["patch"])) if resp.get("patch") else []
            ok = r.status == 200 and resp.get("uid") == "smoke-1" and resp.get("allowed") is True
            result(ok, f"POST /mutate over TLS ({tls.version()}, certificate verified for {host}) answers the AdmissionReview", body)
            result(any(op.get("path", "").startswith("/spec/imagePullSecrets") for op in patch),
                   "standalone rules inject imagePullSecrets for a docker.io image", patch)
        except Exception as e:  # noqa: BLE001
            result(False, f"POST /mutate over TLS for {host}", repr(e))
        # Shutdown: SIGTERM -> exit 0 within the Pod's grace period.
        grace = pod["terminationGracePeriodSeconds"]
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=grace)
            result(rc == 0, f"SIGTERM: exit {rc} after {time.time() - t0:.1f}s (grace {grace}s)", open(log.name).read()[-2000:])
        except subprocess.TimeoutExpired:
            result(False, f"SIGTERM: still running after the grace period ({grace}s)")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main():
    binary, render_dir, smoke_dir = sys.argv[1:4]
    check_configs(binary, render_dir)
    check_controller_args(binary, render_dir)
    smoke(binary, smoke_dir)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
