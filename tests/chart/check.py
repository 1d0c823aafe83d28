#!/usr/bin/env python3
"""Checks rendered chart manifests: Kubernetes schema validation and structural properties.

Usage: check.py CHART_DIR RENDER_DIR
RENDER_DIR holds one file per render, named <case>@<kube-version>.yaml, rendered with
CHART_DIR/ci/<case>-values.yaml. The values a render used are the chart defaults merged with
that file the way Helm merges them (maps merge, everything else replaces). Prints PASS/FAIL
lines; exits 1 on any failure.
"""
import base64
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

try:
    import kubernetes_validate
except ImportError:  # pragma: no cover
    kubernetes_validate = None

# Kinds from CRDs kubernetes-validate has no schema for. Checked structurally below instead.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "Certificate", "Issuer"}
# Kubernetes versions with a schema in kubernetes-validate; older renders are checked
# structurally only (and for real against the 1.20 API server by the e2e tests).
SCHEMA_MIN = (1, 25)

RELEASE_NS = os.environ.get("RELEASE_NS", "pullsecret-injector")
ALWAYS_EXCLUDED = {"kube-system", "kube-node-lease", RELEASE_NS}
EXPECTED_ARGS_PREFIX = [
    "serve",
    "--config", "/etc/pullsecret-injector/config.yaml",
    "--listen", "0.0.0.0:8443",
    "--admin-listen", "0.0.0.0:8080",
    "--tls-cert", "/etc/pullsecret-injector/tls/tls.crt",
    "--tls-key", "/etc/pullsecret-injector/tls/tls.key",
]
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"}

failures = 0
passes = 0
notes_printed = set()


def note(msg):
    if msg not in notes_printed:
        notes_printed.add(msg)
        print(f"NOTE {msg}")


class Case:
    def __init__(self, name, kube, docs, values):
        self.name, self.kube, self.docs, self.values = name, kube, docs, values
        self.errors = []

    def check(self, cond, msg):
        if not cond:
            self.errors.append(msg)
        return cond

    def kind(self, kind):
        return [d for d in self.docs if d.get("kind") == kind]

    def one(self, kind):
        objs = self.kind(kind)
        self.check(len(objs) == 1, f"expected exactly one {kind}, got {len(objs)}")
        return objs[0] if objs else {}


def writer(v):
    """Is a writing feature on? Then the chart renders the controller (Deployment, SA, RBAC)."""
    c = v["config"]
    return not v["standalone"] and bool(c["sync"] or c["repair"] or c.get("credentialProbe") or providers(v))


def providers(v):
    """config.credentialProviders.providers (the plugins the controller runs), [] when off."""
    return (v["config"].get("credentialProviders") or {}).get("providers") or []


def by_args(c, sub):
    """The Deployments whose container runs subcommand `sub` (serve: the webhook)."""
    return [d for d in c.kind("Deployment") if d["spec"]["template"]["spec"]["containers"][0].get("args", [None])[0] == sub]


def webhook_dep(c):
    deps = by_args(c, "serve")
    c.check(len(deps) == 1, f"expected exactly one Deployment running serve, got {len(deps)}")
    return deps[0] if deps else {"metadata": {"name": ""}, "spec": {"template": {"metadata": {}, "spec": {"volumes": [{"projected": {"sources": []}}]}}}}


def pod_labels(dep):
    return dep["spec"]["template"]["metadata"].get("labels") or {}


def version_tuple(v):
    m = re.match(r"v?(\d+)\.(\d+)", v)
    return (int(m.group(1)), int(m.group(2)))


def selector_matches(sel, labels):
    """Evaluates a metav1.LabelSelector the way the API server does."""
    if sel is None:
        return True
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in sel.get("matchExpressions") or []:
        key, op, vals = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(key) not in vals:
            return False
        if op == "NotIn" and key in labels and labels[key] in vals:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def check_schema(c):
    if version_tuple(c.kube) < SCHEMA_MIN:
        note(f"Kubernetes {c.kube}: no schema in kubernetes-validate; those renders are checked structurally only")
        return
    version = ".".join(str(x) for x in version_tuple(c.kube)) + ".0"
    for d in c.docs:
        kind = d.get("kind")
        if kind in CRD_KINDS:
            note(f"schema validation skipped for CRD kind {kind} ({d.get('apiVersion')}): no schema in kubernetes-validate; checked structurally")
            continue
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            c.errors.append(f"schema {version} {kind}/{d['metadata']['name']}: {e.message} at {'.'.join(str(p) for p in e.path)}")
        except Exception as e:  # SchemaNotFoundError and friends
            c.errors.append(f"schema {version} {kind}: {type(e).__name__}: {e}")


def check_common(c):
    for d in c.docs:
        md = d.get("metadata", {})
        if d["kind"] not in CLUSTER_SCOPED:
            c.check(md.get("namespace") == RELEASE_NS, f"{d['kind']}/{md.get('name')} has no metadata.namespace {RELEASE_NS}")
        c.check("app.kubernetes.io/instance" in (md.get("labels") or {}), f"{d['kind']}/{md.get('name')} lacks standard labels")


def config_maps(c):
    """The injector's config ConfigMap(s): the dashboard ConfigMap (metrics.dashboard) is not one."""
    return [d for d in c.kind("ConfigMap") if "config.yaml" in (d.get("data") or {})]


def check_config(c):
    cms = config_maps(c)
    c.check(len(cms) == 1, f"expected exactly one ConfigMap with config.yaml, got {len(cms)}")
    cm = cms[0] if cms else {}
    cfg = yaml.safe_load(cm.get("data", {}).get("config.yaml", "{}"))
    v = c.values["config"]
    # credentialProbe and credentialProviders are rendered only when on (older binaries refuse
    # the keys).
    prov = providers(c.values)
    c.check(set(cfg) == {"mode", "namespaces", "rules", "discovery", "sync", "secretAwareness", "repair",
                         "podOptOut", "requireScope", "revokeAfter"} | ({"credentialProbe"} if v.get("credentialProbe") else set())
            | ({"credentialProviders"} if prov else set()),
            f"config.yaml keys {sorted(cfg)}")
    if prov:
        # binDir always written: the directory the chart mounts the plugins at.
        want = {"binDir": v["credentialProviders"]["binDir"], "providers": prov}
        c.check(cfg.get("credentialProviders") == want, f"config.yaml credentialProviders {cfg.get('credentialProviders')} != {want}")
    c.check(cfg["mode"] == v["mode"], "config.yaml mode differs from values")
    c.check(cfg["namespaces"]["selection"] == v["namespaces"]["selection"], "config.yaml selection differs")
    excl = set(cfg["namespaces"]["exclude"])
    c.check(ALWAYS_EXCLUDED <= excl and set(v["namespaces"]["exclude"]) <= excl,
            f"config.yaml exclude {sorted(excl)} misses {sorted(ALWAYS_EXCLUDED - excl)}")
    c.check(cfg["rules"] == v["rules"], "config.yaml rules differ from values")
    for k in ("discovery", "sync", "secretAwareness", "repair", "podOptOut", "requireScope"):
        c.check(cfg[k] is v[k], f"config.yaml {k} differs from values")
    c.check(cfg["revokeAfter"] == v["revokeAfter"], "config.yaml revokeAfter differs from values")
    c.check(cfg.get("credentialProbe", False) is v.get("credentialProbe", False), "config.yaml credentialProbe differs from values")
    return cfg


def check_webhook(c, svc):
    v = c.values
    mwc = c.one("MutatingWebhookConfiguration")
    all_hooks = mwc.get("webhooks", [])
    debug_enabled = v["webhook"].get("debugContainers", {}).get("enabled", False)
    want_names = ["inject.pullsecret-injector.io", "audit.pullsecret-injector.io"]
    if debug_enabled:
        want_names.append("debug.pullsecret-injector.io")
    c.check([h["name"] for h in all_hooks] == want_names, f"webhook names {[h['name'] for h in all_hooks]}")
    hooks = [h for h in all_hooks if h["name"] != "debug.pullsecret-injector.io"]
    for h in all_hooks:
        if h["name"] != "debug.pullsecret-injector.io":
            continue
        c.check(("objectSelector" in h) == bool(v["config"]["podOptOut"]), "debug: objectSelector follows config.podOptOut")
        # kubectl debug: UPDATE of the ephemeralcontainers subresource only, never blocking.
        c.check(h.get("rules") == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"],
                                    "resources": ["pods/ephemeralcontainers"], "scope": "Namespaced"}], "debug: rules")
        c.check(h.get("failurePolicy") == "Ignore", "debug: failurePolicy must be Ignore")
        c.check(h.get("reinvocationPolicy") == "Never", "debug: reinvocationPolicy")
        c.check(h.get("sideEffects") == "None", "debug: sideEffects")
        c.check(h["clientConfig"]["service"].get("path") == "/mutate", "debug: path")
        c.check(h.get("namespaceSelector") == hooks[0].get("namespaceSelector"), "debug: same namespaces as the inject entry")
    excluded = ALWAYS_EXCLUDED | set(v["config"]["namespaces"]["exclude"])
    own_pods = [pod_labels(d) for d in c.kind("Deployment")]
    for h in hooks:
        n = h["name"]
        c.check(h.get("rules") == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                                    "resources": ["pods"], "scope": "Namespaced"}], f"{n}: rules are not exactly pods CREATE")
        c.check(h.get("sideEffects") == "None", f"{n}: sideEffects")
        c.check(h.get("admissionReviewVersions") == ["v1"], f"{n}: admissionReviewVersions")
        c.check(h.get("reinvocationPolicy") == "IfNeeded", f"{n}: reinvocationPolicy")
        c.check(h.get("failurePolicy") == v["webhook"]["failurePolicy"], f"{n}: failurePolicy")
        c.check(1 <= h.get("timeoutSeconds", 0) <= 30 and h["timeoutSeconds"] == v["webhook"]["timeoutSeconds"], f"{n}: timeoutSeconds")
        cc = h.get("clientConfig", {})
        s = cc.get("service", {})
        c.check(s.get("name") == svc["metadata"]["name"] and s.get("namespace") == RELEASE_NS
                and s.get("port") == v["service"]["port"], f"{n}: clientConfig.service does not point at the Service")
        want_path = "/audit" if (n.startswith("audit.") or v["config"]["mode"] == "audit") else "/mutate"
        c.check(s.get("path") == want_path, f"{n}: path {s.get('path')} != {want_path}")
        # caBundle per certificate source.
        src = v["tls"]["source"]
        if src == "cert-manager":
            c.check("caBundle" not in cc, f"{n}: caBundle must be left to cainjector")
        else:
            ca = cc.get("caBundle", "")
            c.check(b"-----BEGIN CERTIFICATE-----" in base64.b64decode(ca or "AA=="), f"{n}: caBundle is not base64 PEM")
        # Exclusions: expressed in the selector...
        exprs = h.get("namespaceSelector", {}).get("matchExpressions", [])
        name_excl = [e for e in exprs if e["key"] == "kubernetes.io/metadata.name"]
        c.check(len(name_excl) == 1 and name_excl[0]["operator"] == "NotIn" and excluded <= set(name_excl[0]["values"]),
                f"{n}: namespaceSelector does not exclude {sorted(excluded)}")
        # ...and proven by evaluating it: no excluded namespace matches, whatever its labels.
        for ns in excluded:
            for inject in (None, "enabled", "audit", "disabled"):
                labels = {"kubernetes.io/metadata.name": ns}
                if inject:
                    labels["pullsecret-injector/inject"] = inject
                c.check(not selector_matches(h["namespaceSelector"], labels), f"{n}: matches namespace {labels}")
        if v["config"]["podOptOut"]:
            c.check(h.get("objectSelector") == {"matchExpressions": [
                {"key": "pullsecret-injector/inject", "operator": "NotIn", "values": ["disabled"]}]}, f"{n}: objectSelector")
            for labels in own_pods:
                c.check(not selector_matches(h.get("objectSelector"), labels), f"{n}: objectSelector matches the injector's own Pods {labels}")
            c.check(not selector_matches(h.get("objectSelector"), {"pullsecret-injector/inject": "disabled"}), f"{n}: Pod opt-out ignored")
        else:
            # podOptOut: false: the webhook must see every Pod, whatever its labels (the
            # injector's own Pods are in the excluded release namespace).
            c.check("objectSelector" not in h, f"{n}: objectSelector {h.get('objectSelector')} with podOptOut false")
            for inject in ("disabled", "audit", "enabled"):
                c.check(selector_matches(h.get("objectSelector"), {"pullsecret-injector/inject": inject}),
                        f"{n}: a Pod labelled inject={inject} escapes the webhook with podOptOut false")
    # Which namespaces each entry selects.
    def sel(i, labels):
        return selector_matches(hooks[i]["namespaceSelector"], dict(labels, **{"kubernetes.io/metadata.name": "team-a"}))
    if len(hooks) == 2:
        lab = lambda x: {"pullsecret-injector/inject": x} if x else {}
        c.check(sel(0, lab("enabled")) and not sel(0, lab("audit")) and not sel(0, lab("disabled")), "inject entry selection")
        c.check(sel(1, lab("audit")) and not sel(1, lab("enabled")) and not sel(1, lab(None)), "audit entry selection")
        c.check(sel(0, lab(None)) == (v["config"]["namespaces"]["selection"] == "all"), "unlabelled namespace selection")
    if v["tls"]["source"] == "cert-manager":
        ann = mwc["metadata"].get("annotations", {}).get("cert-manager.io/inject-ca-from", "")
        certs = {f"{d['metadata']['namespace']}/{d['metadata']['name']}" for d in c.kind("Certificate")}
        c.check(ann in certs, f"inject-ca-from {ann!r} names no rendered Certificate")
    else:
        c.check("cert-manager.io/inject-ca-from" not in mwc["metadata"].get("annotations", {}), "stray inject-ca-from")


def check_deployment(c, cfg):
    v = c.values
    dep = webhook_dep(c)
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    psc = pod.get("securityContext", {})
    c.check(spec["replicas"] == v["replicaCount"], "replicas")
    c.check(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 65532 and psc.get("runAsGroup") == 65532
            and psc.get("seccompProfile") == {"type": "RuntimeDefault"}, "pod securityContext not restricted")
    c.check(pod.get("automountServiceAccountToken") is (not v["standalone"]), "automountServiceAccountToken")
    c.check(pod.get("serviceAccountName") == dep["metadata"]["name"], "serviceAccountName")
    tsc = pod.get("topologySpreadConstraints", [])
    c.check(any(t["topologyKey"] == "kubernetes.io/hostname" and t["whenUnsatisfiable"] == "ScheduleAnyway" for t in tsc),
            "topologySpreadConstraints")
    c.check(pod["securityContext"].get("fsGroup") == 65532, "fsGroup")
    # webhook.hostNetwork: the node's network namespace, with the cluster DNS still used.
    host = v["webhook"].get("hostNetwork", False)
    c.check(pod.get("hostNetwork", False) is host and pod.get("dnsPolicy") == ("ClusterFirstWithHostNet" if host else None),
            f"hostNetwork {pod.get('hostNetwork')} / dnsPolicy {pod.get('dnsPolicy')} with webhook.hostNetwork={host}")
    skips = {k: x for k, x in (dep["metadata"].get("annotations") or {}).items() if k.startswith("checkov.io/skip")}
    c.check(list(skips.values()) == ([x for x in skips.values() if x.startswith("CKV_K8S_19=")] if host else []) and bool(skips) == host,
            f"checkov skip annotations {skips}: CKV_K8S_19 (host network) only, only with webhook.hostNetwork")
    (ctr,) = pod["containers"]
    sc = ctr.get("securityContext", {})
    c.check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
            and sc.get("runAsNonRoot") is True and sc.get("capabilities") == {"drop": ["ALL"]}
            and sc.get("seccompProfile") == {"type": "RuntimeDefault"} and sc.get("privileged") is False,
            "container securityContext not restricted")
    sh = v["shutdown"]
    want = EXPECTED_ARGS_PREFIX + ["--log-format", v["logFormat"], "--log-level", v["logLevel"],
                                   "--shutdown-delay", str(sh["delaySeconds"]), "--drain-timeout", str(sh["drainTimeoutSeconds"])]
    if v["standalone"]:
        want.append("--standalone")
    if v["webhook"]["clientCA"]:
        want += ["--client-ca", "/etc/pullsecret-injector/client-ca/ca.crt"]
    if v["webhook"]["memoryBudget"]:
        want += ["--memory-budget", v["webhook"]["memoryBudget"]]
    c.check(ctr.get("args") == want, f"args {ctr.get('args')} != {want}")
    ports = {p["name"]: p["containerPort"] for p in ctr.get("ports", [])}
    c.check(ports == {"https": 8443, "admin": 8080}, f"ports {ports}")
    c.check(ctr.get("livenessProbe", {}).get("httpGet") == {"path": "/livez", "port": "admin"}, "livenessProbe")
    c.check(ctr.get("readinessProbe", {}).get("httpGet") == {"path": "/readyz", "port": "admin"}, "readinessProbe")
    c.check({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} in ctr.get("env", []), "POD_NAMESPACE env")
    # serve takes no --lease-name: the Lease is the controller's.
    c.check("--lease-name" not in ctr.get("args", []), "serve gets --lease-name")
    c.check(ctr.get("resources") == v["resources"], "resources differ from values")
    # Config and TLS: one directory mount, no subPath (kubelet updates must reach the files).
    mounts = ctr.get("volumeMounts", [])
    c.check(all("subPath" not in m and "subPathExpr" not in m for m in mounts), "a volumeMount uses subPath")
    c.check([m["mountPath"] for m in mounts] == ["/etc/pullsecret-injector"], f"mounts {mounts}")
    (vol,) = pod["volumes"]
    srcs = vol.get("projected", {}).get("sources", [])
    paths = sorted(i["path"] for s in srcs for src in s.values() for i in src.get("items", []))
    want_paths = ["config.yaml", "tls/tls.crt", "tls/tls.key"]
    if v["webhook"]["clientCA"]:
        want_paths = sorted(want_paths + ["client-ca/ca.crt"])
        # The file the kubelet writes is the CA the values gave, verbatim.
        (cm,) = [m for m in c.kind("ConfigMap") if "config.yaml" in (m.get("data") or {})]
        c.check(cm["data"].get("client-ca.crt", "").strip() == v["webhook"]["clientCA"].strip(), "client-ca.crt differs from webhook.clientCA")
    c.check(paths == want_paths, f"projected paths {paths}")
    ann = spec["template"]["metadata"].get("annotations") or {}
    c.check(("checksum/client-ca" in ann) == bool(v["webhook"]["clientCA"]), "checksum/client-ca annotation iff webhook.clientCA")
    c.check(not any("config" in k for k in ann if k.startswith("checksum/")), "config checksum annotation (config is hot-reloaded)")
    c.check(("checksum/tls" in ann) == (v["tls"]["source"] == "helm"), "checksum/tls annotation iff tls.source=helm")
    # Shutdown: preStop sleep only on 1.30+, grace above the whole shutdown sequence.
    pre = ctr.get("lifecycle", {}).get("preStop")
    want_pre = version_tuple(c.kube) >= (1, 30) and sh["preStopSleepSeconds"] > 0
    c.check(bool(pre) == want_pre, f"preStop present={bool(pre)} on {c.kube}")
    if pre:
        c.check(pre == {"sleep": {"seconds": sh["preStopSleepSeconds"]}}, "preStop must be a sleep action (no shell in the image)")
    total = sh["delaySeconds"] + sh["drainTimeoutSeconds"] + (sh["preStopSleepSeconds"] if pre else 0)
    c.check(pod["terminationGracePeriodSeconds"] > total, f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} <= {total}")
    return dep


def check_pdb(c, dep):
    v = c.values
    pdbs = c.kind("PodDisruptionBudget")
    want = v["podDisruptionBudget"]["enabled"] and v["replicaCount"] > 1
    # One at most: the controller gets none (not in the admission path; see its template).
    c.check(len(pdbs) == int(bool(want)), f"{len(pdbs)} PodDisruptionBudgets, want {int(bool(want))}")
    if pdbs:
        p = pdbs[0]
        api = "policy/v1" if version_tuple(c.kube) >= (1, 21) else "policy/v1beta1"
        c.check(p["apiVersion"] == api, f"PDB apiVersion {p['apiVersion']} on {c.kube}")
        c.check(p["spec"]["minAvailable"] < v["replicaCount"], "PDB minAvailable >= replicas")
        c.check(p["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"], "PDB selector")


WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection", "escalate", "bind", "impersonate", "*"}


def grants(c):
    """{ServiceAccount name: {(scope, apiGroup, resource, resourceNames): verbs}} from the rendered
    roles and bindings; scope is "cluster" or the Role's namespace."""
    roles = {(r["kind"], r["metadata"]["name"]): r for r in c.kind("ClusterRole") + c.kind("Role")}
    out = {}
    for b in c.kind("ClusterRoleBinding") + c.kind("RoleBinding"):
        ref = (b["roleRef"]["kind"], b["roleRef"]["name"])
        role = roles.get(ref)
        if not c.check(role is not None, f"{b['kind']}/{b['metadata']['name']} binds {ref}, which is not rendered"):
            continue
        c.check(b["kind"] == "ClusterRoleBinding" or ref[0] == "Role", f"{b['kind']}/{b['metadata']['name']} binds a ClusterRole")
        scope = "cluster" if role["kind"] == "ClusterRole" else role["metadata"]["namespace"]
        for subj in b["subjects"]:
            c.check(subj.get("kind") == "ServiceAccount" and subj.get("namespace") == RELEASE_NS,
                    f"{b['kind']}/{b['metadata']['name']} subject {subj}")
            g = out.setdefault(subj["name"], {})
            for rule in role.get("rules", []):
                for f in ("verbs", "resources", "apiGroups"):
                    c.check("*" not in rule.get(f, []), f"{role['kind']}/{role['metadata']['name']} has '*' in {f}")
                if role["kind"] == "ClusterRole":
                    c.check("resourceNames" not in rule, "cluster rules name no resources")
                names = tuple(rule.get("resourceNames", []))
                for group in rule["apiGroups"]:
                    for res in rule["resources"]:
                        g.setdefault((scope, group, res, names), set()).update(rule["verbs"])
    return out


def expected_grants(v, fullname):
    """What each ServiceAccount may do, per feature set (docs/security.md, rbac.yaml)."""
    cfg = v["config"]
    L, LW = {"list"}, {"list", "watch"}
    hook = {("cluster", "", "namespaces", ()): LW}
    if cfg["secretAwareness"]:
        hook[("cluster", "", "secrets", ())] = LW
    probe = bool(cfg.get("credentialProbe"))
    prov = providers(v)
    # The sources (list/watch in the release namespace): read with discovery, sync, the probe
    # and credentialProviders (the minted Secrets' expiry, for the admission warning).
    sources = cfg["discovery"] or cfg["sync"] or probe or bool(prov)
    if sources:
        hook[(RELEASE_NS, "", "secrets", ())] = LW
    want = {fullname: hook}
    if writer(v):
        ctl = {("cluster", "", "namespaces", ()): LW,
               (RELEASE_NS, "coordination.k8s.io", "leases", ()): {"create"},
               (RELEASE_NS, "coordination.k8s.io", "leases", (fullname,)): {"get", "patch"}}
        if sources:
            ctl[(RELEASE_NS, "", "secrets", ())] = LW
        if probe:
            # The pullsecret-injector/probe annotation on the sources: patch, release namespace only.
            ctl[(RELEASE_NS, "", "secrets", ())] = LW | {"patch"}
        if prov:
            # The providers' Secrets: create (not limitable by name), then get/patch/update by name.
            ctl[(RELEASE_NS, "", "secrets", ())] = ctl[(RELEASE_NS, "", "secrets", ())] | {"create"}
            ctl[(RELEASE_NS, "", "secrets", tuple(dict.fromkeys(p["secret"] for p in prov)))] = {"get", "patch", "update"}
        if cfg["sync"]:
            ctl[("cluster", "", "secrets", ())] = LW | {"create", "update", "delete"}
            ctl[("cluster", "", "pods", ())] = L
            # Revocation Events; the ownership ledger ConfigMap (created once, then get/update).
            ctl[("cluster", "events.k8s.io", "events", ())] = {"create", "patch"}
            ctl[(RELEASE_NS, "", "configmaps", ())] = {"create"}
            ctl[(RELEASE_NS, "", "configmaps", (f"{fullname}-copies",))] = {"get", "update"}
        if cfg["repair"]:
            ctl[("cluster", "", "pods", ())] = LW
            ctl[("cluster", "", "pods/eviction", ())] = {"create"}
            ctl[("cluster", "events.k8s.io", "events", ())] = {"create", "patch"}
        want[f"{fullname}-controller"] = ctl
    return want


def check_rbac(c):
    v = c.values
    roles = c.kind("ClusterRole") + c.kind("Role")
    bindings = c.kind("ClusterRoleBinding") + c.kind("RoleBinding")
    if v["standalone"]:
        c.check(not roles and not bindings, "standalone renders RBAC")
        return
    fullname = webhook_dep(c)["metadata"]["name"]
    got = grants(c)
    want = expected_grants(v, fullname)
    fmt = lambda g: {f"{k[0]}:{k[1] or 'core'}/{k[2]}{'[' + ','.join(k[3]) + ']' if k[3] else ''}": sorted(x) for k, x in sorted(g.items())}
    c.check(set(got) == set(want), f"RBAC binds ServiceAccounts {sorted(got)}, want {sorted(want)}")
    for sa, w in want.items():
        c.check(got.get(sa) == w, f"ServiceAccount {sa} is granted {fmt(got.get(sa, {}))}, want exactly {fmt(w)}")
    # The property behind the split, stated on its own: the Pods that answer the API server
    # hold a token that can only read (namespaces, and Secrets as the features need).
    hook = got.get(fullname, {})
    writes = {k: x & WRITE_VERBS for k, x in hook.items() if x & WRITE_VERBS}
    c.check(not writes, f"the webhook's ServiceAccount has write verbs {fmt(writes)}")
    c.check(all(k[2] in ("namespaces", "secrets") for k in hook), f"the webhook's ServiceAccount reaches {sorted({k[2] for k in hook})}")
    c.check(not any(k[2] == "secrets" and k[0] == "cluster" for k in hook) or v["config"]["secretAwareness"],
            "the webhook reads Secrets cluster-wide without secretAwareness")
    c.check(all(x <= {"list", "watch"} for x in hook.values()), "the webhook's ServiceAccount has a verb besides list/watch")
    c.check(len(bindings) == len(roles), "every role has one binding")
    for r in c.kind("Role"):
        c.check(r["metadata"]["namespace"] == RELEASE_NS, "Role outside the release namespace")


def check_controller(c, dep):
    """The controller: rendered iff a writing feature is on; runs `controller` under its own SA."""
    v = c.values
    fullname = dep["metadata"]["name"]
    name = f"{fullname}-controller"
    ctls = by_args(c, "controller")
    sas = {x["metadata"]["name"] for x in c.kind("ServiceAccount")}
    svcs = {x["metadata"]["name"]: x for x in c.kind("Service")}
    c.check(len(c.kind("Deployment")) == len(ctls) + 1, f"Deployments {[d['metadata']['name'] for d in c.kind('Deployment')]}")
    if not writer(v):
        c.check(not ctls, "a controller Deployment without sync or repair")
        c.check(sas == {fullname}, f"ServiceAccounts {sorted(sas)}, want only {fullname}")
        c.check(set(svcs) == {fullname}, f"Services {sorted(svcs)}")
        return
    if not c.check(len(ctls) == 1, f"{len(ctls)} controller Deployments with a writing feature on"):
        return
    ctl = ctls[0]
    c.check(ctl["metadata"]["name"] == name, f"controller Deployment name {ctl['metadata']['name']}")
    c.check(sas == {fullname, name}, f"ServiceAccounts {sorted(sas)}, want {fullname} and {name}")
    spec = ctl["spec"]
    pod = spec["template"]["spec"]
    c.check(spec["replicas"] == v["controller"]["replicaCount"], "controller replicas")
    c.check(pod.get("serviceAccountName") == name, "controller serviceAccountName")
    c.check(pod.get("automountServiceAccountToken") is True, "controller automountServiceAccountToken")
    hook_pod = dep["spec"]["template"]["spec"]
    c.check(pod.get("securityContext") == hook_pod.get("securityContext"), "controller Pod securityContext differs from the webhook's")
    (ctr,) = pod["containers"]
    (hook_ctr,) = hook_pod["containers"]
    c.check(ctr.get("securityContext") == hook_ctr.get("securityContext"), "controller container securityContext differs from the webhook's")
    c.check(ctr.get("image") == hook_ctr.get("image") and ctr.get("imagePullPolicy") == hook_ctr.get("imagePullPolicy"), "controller image")
    want = ["controller", "--config", "/etc/pullsecret-injector/config.yaml", "--admin-listen", "0.0.0.0:8080",
            "--log-format", v["logFormat"], "--log-level", v["logLevel"], "--lease-name", fullname]
    c.check(ctr.get("args") == want, f"controller args {ctr.get('args')} != {want}")
    ports = {p["name"]: p["containerPort"] for p in ctr.get("ports", [])}
    c.check(ports == {"admin": 8080}, f"controller ports {ports}")
    c.check(ctr.get("livenessProbe", {}).get("httpGet") == {"path": "/livez", "port": "admin"}, "controller livenessProbe")
    c.check(ctr.get("readinessProbe", {}).get("httpGet") == {"path": "/readyz", "port": "admin"}, "controller readinessProbe")
    env = ctr.get("env", [])
    for var, path in (("POD_NAMESPACE", "metadata.namespace"), ("POD_NAME", "metadata.name")):
        c.check({"name": var, "valueFrom": {"fieldRef": {"fieldPath": path}}} in env, f"controller {var} env")
    c.check(ctr.get("resources") == v["controller"]["resources"], "controller resources differ from values")
    mounts = ctr.get("volumeMounts", [])
    prov = providers(v)
    cp = v["credentialProviders"]
    bin_dir = v["config"]["credentialProviders"]["binDir"]
    want_mounts = [("/etc/pullsecret-injector", True)] + ([(bin_dir, True)] if prov else [])
    c.check([(m["mountPath"], m.get("readOnly")) for m in mounts] == want_mounts, f"controller mounts {mounts}, want {want_mounts}")
    c.check(all("subPath" not in m for m in mounts if m["name"] == "config"), f"controller config mount uses subPath: {mounts}")
    vols = pod.get("volumes", [])
    srcs = [src for vol in vols for src in vol.get("projected", {}).get("sources", [])]
    c.check(len(vols) == 1 + bool(prov) and vols[0]["name"] == "config" and [list(x) for x in srcs] == [["configMap"]]
            and srcs[0]["configMap"]["name"] == config_maps(c)[0]["metadata"]["name"]
            and [i["path"] for i in srcs[0]["configMap"]["items"]] == ["config.yaml"],
            f"controller volumes must hold the config (no TLS) and, with credentialProviders, the plugins only: {vols}")
    inits = pod.get("initContainers", [])
    plugins_image = cp["image"]["repository"] + (f"@{cp['image']['digest']}" if cp["image"]["digest"] else f":{cp['image']['tag']}")
    if not prov:
        c.check(not inits, "controller init containers without credentialProviders")
    else:
        (pm,) = [m for m in mounts if m["name"] == "credential-providers"] or [{}]
        (pv,) = [x for x in vols if x["name"] == "credential-providers"] or [{}]
        if cp["source"] == "imageVolume":
            # The image itself, read-only, its credentialProviders.path directory at binDir.
            c.check(not inits, "init containers with credentialProviders.source=imageVolume")
            c.check(version_tuple(c.kube) >= (1, 33), f"an image volume rendered for Kubernetes {c.kube}")
            c.check(set(pv) == {"name", "image"} and pv["image"] == {"reference": plugins_image, "pullPolicy": cp["image"]["pullPolicy"]},
                    f"plugins image volume {pv}")
            sub = cp["path"].strip("/")
            c.check(pm.get("subPath", "") == sub and pm.get("readOnly") is True, f"plugins mount {pm}, want subPath {sub!r}, read-only")
        else:
            # An init container from the plugins' image copies them into an emptyDir, locked
            # down exactly like the controller; the controller mounts the copies read-only.
            c.check(set(pv) == {"name", "emptyDir"} and pv["emptyDir"] == {"sizeLimit": cp["initContainer"]["sizeLimit"]},
                    f"plugins emptyDir {pv}")
            c.check("subPath" not in pm, f"plugins mount {pm}")
            if c.check(len(inits) == 1, f"controller init containers {[i.get('name') for i in inits]}"):
                ic = inits[0]
                c.check(ic.get("image") == plugins_image and ic.get("imagePullPolicy") == cp["image"]["pullPolicy"],
                        f"init container image {ic.get('image')}, want {plugins_image}")
                c.check(ic.get("securityContext") == ctr.get("securityContext"), "init container securityContext differs from the controller's")
                c.check(ic.get("resources") == v["controller"]["resources"], "init container resources differ from controller.resources")
                want_cmd = cp["initContainer"]["command"] or ["cp", "-R", cp["path"].rstrip("/") + "/.", bin_dir + "/"]
                c.check(ic.get("command") == want_cmd, f"init container command {ic.get('command')} != {want_cmd}")
                c.check(ic.get("volumeMounts") == [{"name": "credential-providers", "mountPath": bin_dir}],
                        f"init container mounts {ic.get('volumeMounts')}")
                c.check(ic.get("env") == [{"name": "CREDENTIAL_PROVIDERS_DIR", "value": bin_dir}], f"init container env {ic.get('env')}")
    # The cloud identity the plugins use is the controller's alone.
    sa_ann = {x["metadata"]["name"]: x["metadata"].get("annotations") or {} for x in c.kind("ServiceAccount")}
    ctl_sa = v["controller"].get("serviceAccountAnnotations") or {}
    c.check(sa_ann.get(name) == {**v["serviceAccountAnnotations"], **ctl_sa}, f"controller ServiceAccount annotations {sa_ann.get(name)}")
    c.check(sa_ann.get(fullname) == v["serviceAccountAnnotations"], f"webhook ServiceAccount annotations {sa_ann.get(fullname)}")
    want_labels = {**v["podLabels"], **(v["controller"].get("podLabels") or {})}
    c.check(all(pod_labels(ctl).get(k) == x for k, x in want_labels.items()), f"controller Pod labels {pod_labels(ctl)} miss {want_labels}")
    c.check(not any(k in pod_labels(dep) for k in (v["controller"].get("podLabels") or {})), "controller.podLabels on the webhook Pods")
    ann = spec["template"]["metadata"].get("annotations") or {}
    c.check(not any(k.startswith("checksum/") for k in ann), "controller checksum annotation (config is hot-reloaded)")
    c.check(ann == {**v["podAnnotations"], **v["controller"]["podAnnotations"]}, f"controller Pod annotations {ann}")
    # Selectors: the two Pod sets never overlap, so the webhook Service (admission calls), its
    # PDB and Deployment never pick a controller Pod, and the other way round.
    ctl_pods, hook_pods = pod_labels(ctl), pod_labels(dep)
    c.check(selector_matches(spec["selector"], ctl_pods) and not selector_matches(spec["selector"], hook_pods),
            "controller Deployment selector")
    c.check(not selector_matches(dep["spec"]["selector"], ctl_pods), "the webhook Deployment's selector matches controller Pods")
    c.check(not selector_matches({"matchLabels": svcs[fullname]["spec"]["selector"]}, ctl_pods),
            "the webhook Service selects controller Pods (admission calls would reach them)")
    for pdb in c.kind("PodDisruptionBudget"):
        c.check(not selector_matches(pdb["spec"]["selector"], ctl_pods), "a PodDisruptionBudget selects controller Pods")
    c.check(ctl_pods.get("pullsecret-injector/inject") == "disabled", "controller Pods lack pullsecret-injector/inject=disabled")
    # Its metrics Service: admin port only, controller Pods only.
    csvc = svcs.get(name)
    if c.check(csvc is not None and set(svcs) == {fullname, name}, f"Services {sorted(svcs)}, want {fullname} and {name}"):
        sel = {"matchLabels": csvc["spec"]["selector"]}
        c.check(selector_matches(sel, ctl_pods) and not selector_matches(sel, hook_pods), "controller Service selector")
        c.check([(p["name"], p["port"], p["targetPort"]) for p in csvc["spec"]["ports"]] == [("admin", 8080, "admin")],
                f"controller Service ports {csvc['spec']['ports']}")


def check_service(c):
    svcs = [x for x in c.kind("Service") if not x["metadata"]["name"].endswith("-controller")]
    c.check(len(svcs) == 1, f"expected exactly one webhook Service, got {len(svcs)}")
    svc = svcs[0] if svcs else {"metadata": {"name": ""}, "spec": {"ports": []}}
    c.check(svc["spec"].get("type") == "ClusterIP", "Service type")
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    c.check(ports == {"https": (c.values["service"]["port"], "https"), "admin": (8080, "admin")}, f"Service ports {ports}")
    return svc


def openssl(*args, stdin=None):
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, text=True)


def check_tls(c, svc):
    v = c.values
    name = svc["metadata"]["name"]
    dns = [name, f"{name}.{RELEASE_NS}", f"{name}.{RELEASE_NS}.svc", f"{name}.{RELEASE_NS}.svc.cluster.local"]
    secret_name = (v["tls"]["secretName"] or f"{webhook_dep(c)['metadata']['name']}-tls")
    vol_secret = [s["secret"]["name"] for s in webhook_dep(c)["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"] if "secret" in s]
    c.check(vol_secret == [secret_name], f"TLS volume uses {vol_secret}, want {secret_name}")
    src = v["tls"]["source"]
    secrets = c.kind("Secret")
    if src == "helm":
        tls_secrets = [x for x in secrets if x.get("type") == "kubernetes.io/tls"]
        ca_secrets = [x for x in secrets if x["metadata"]["name"].endswith("-ca")]
        c.check(len(secrets) == 2 and len(tls_secrets) == 1 and len(ca_secrets) == 1,
                f"helm renders a TLS Secret and a CA Secret, got {[x['metadata']['name'] for x in secrets]}")
        (s,) = tls_secrets or [{"metadata": {"name": ""}}]
        c.check(s["metadata"]["name"] == secret_name, "helm TLS Secret")
        data = {k: base64.b64decode(x).decode() for k, x in s.get("data", {}).items()}
        c.check(set(data) == {"ca.crt", "tls.crt", "tls.key"}, "TLS Secret keys")
        # The CA Secret holds the CA's key; it is never mounted into the Pods.
        (ca_secret,) = ca_secrets or [{"metadata": {"name": ""}, "data": {}}]
        ca_data = {k: base64.b64decode(x).decode() for k, x in ca_secret.get("data", {}).items()}
        c.check(set(ca_data) == {"ca.crt", "ca.key"} and ca_data.get("ca.crt") == data.get("ca.crt"),
                "CA Secret keys, or its ca.crt differs from the TLS Secret's")
        c.check(ca_secret["metadata"]["name"] not in vol_secret, "the CA Secret (with the CA key) is mounted")
        hook_ca = base64.b64decode(c.one("MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"]["caBundle"]).decode()
        c.check(hook_ca == data.get("ca.crt"), "caBundle differs from the Secret's ca.crt")
        with tempfile.TemporaryDirectory() as t:
            for k, x in data.items():
                open(os.path.join(t, k), "w").write(x)
            r = openssl("verify", "-CAfile", f"{t}/ca.crt", "-purpose", "sslserver", f"{t}/tls.crt")
            c.check(r.returncode == 0, f"serving cert does not verify against the CA: {r.stdout}{r.stderr}")
            r = openssl("x509", "-in", f"{t}/tls.crt", "-noout", "-ext", "subjectAltName")
            sans = set(re.findall(r"DNS:([^,\s]+)", r.stdout))
            c.check(set(dns) <= sans, f"serving cert SANs {sorted(sans)} miss {sorted(set(dns) - sans)}")
            pub_crt = openssl("x509", "-in", f"{t}/tls.crt", "-noout", "-pubkey").stdout
            pub_key = openssl("pkey", "-in", f"{t}/tls.key", "-pubout").stdout
            c.check(pub_crt and pub_crt == pub_key, "tls.key does not match tls.crt")
    else:
        c.check(not secrets, "a Secret is rendered although the chart does not generate certificates")
    certs = c.kind("Certificate")
    if src == "cert-manager":
        serving = [x for x in certs if not x["spec"].get("isCA")]
        c.check(len(serving) == 1, "one serving Certificate")
        if serving:
            s = serving[0]["spec"]
            c.check(s["secretName"] == secret_name, "Certificate secretName")
            c.check(sorted(s["dnsNames"]) == sorted(dns), f"Certificate dnsNames {s['dnsNames']}")
            c.check("server auth" in s.get("usages", []), "Certificate usages")
            ref = v["tls"]["certManager"]["issuerRef"]
            issuers = {x["metadata"]["name"] for x in c.kind("Issuer")}
            if ref:
                c.check(s["issuerRef"]["name"] == ref["name"] and not issuers, "issuerRef not used")
            else:
                c.check(s["issuerRef"]["name"] in issuers and s["issuerRef"]["kind"] == "Issuer", "generated CA Issuer not used")
                ca = [x for x in certs if x["spec"].get("isCA")]
                c.check(len(ca) == 1 and ca[0]["spec"]["issuerRef"]["name"] in issuers, "CA Certificate")
    else:
        c.check(not certs and not c.kind("Issuer"), "cert-manager objects without tls.source=cert-manager")


def check_optional(c):
    v = c.values
    sms = c.kind("ServiceMonitor")
    c.check(bool(sms) == v["metrics"]["serviceMonitor"]["enabled"], "ServiceMonitor iff metrics.serviceMonitor.enabled")
    for sm in sms:
        c.check(sm["spec"]["endpoints"][0]["port"] == "admin" and sm["spec"]["endpoints"][0]["path"] == "/metrics", "ServiceMonitor endpoint")
        # The webhook's Service and, with a writing feature, the controller's: both scraped.
        picked = sorted(x["metadata"]["name"] for x in c.kind("Service") if selector_matches(sm["spec"]["selector"], x["metadata"]["labels"]))
        c.check(picked == sorted(x["metadata"]["name"] for x in c.kind("Service")), f"ServiceMonitor selects Services {picked}")
    prs = c.kind("PrometheusRule")
    c.check(bool(prs) == v["metrics"]["prometheusRule"]["enabled"], "PrometheusRule iff metrics.prometheusRule.enabled")
    for pr in prs:
        c.check(pr["apiVersion"] == "monitoring.coreos.com/v1", "PrometheusRule apiVersion")
        rules = [r for g in pr["spec"]["groups"] for r in g["rules"]]
        c.check(rules and all(r.get("alert", "").startswith("PullsecretInjector") and r.get("expr") and r.get("for")
                              and r.get("labels", {}).get("severity") for r in rules),
                "PrometheusRule: every rule is a PullsecretInjector* alert with expr, for and severity (tests/alerts/)")
        for k, x in v["metrics"]["prometheusRule"]["labels"].items():
            c.check(pr["metadata"]["labels"].get(k) == x, f"PrometheusRule label {k}")
    dash = [d for d in c.kind("ConfigMap") if "pullsecret-injector.json" in (d.get("data") or {})]
    c.check(bool(dash) == v["metrics"]["dashboard"]["enabled"], "dashboard ConfigMap iff metrics.dashboard.enabled")
    for d in dash:
        try:
            json.loads(d["data"]["pullsecret-injector.json"])
        except ValueError as e:
            c.check(False, f"dashboard JSON does not parse: {e}")
        for k, x in v["metrics"]["dashboard"]["labels"].items():
            c.check(d["metadata"]["labels"].get(k) == x, f"dashboard ConfigMap label {k}")
    nps = c.kind("NetworkPolicy")
    c.check(len(nps) == (v["networkPolicy"]["enabled"] * (1 + writer(v))),
            f"{len(nps)} NetworkPolicies: one per Deployment iff networkPolicy.enabled")
    hook_pods = pod_labels(webhook_dep(c))
    ctl_pods = [pod_labels(d) for d in by_args(c, "controller")]
    for np in nps:
        s = np["spec"]
        c.check(sorted(s["policyTypes"]) == ["Egress", "Ingress"], "NetworkPolicy policyTypes")
        ing = s.get("ingress", [])
        is_ctl = np["metadata"]["name"].endswith("-controller")
        c.check(selector_matches(s["podSelector"], hook_pods) != is_ctl
                and all(selector_matches(s["podSelector"], p) == is_ctl for p in ctl_pods),
                f"NetworkPolicy/{np['metadata']['name']} selects the wrong Pods")
        if is_ctl:
            # No webhook port: ingress only to the admin port, only from the configured peers.
            c.check(ing == [] if not v["networkPolicy"]["adminFrom"] else len(ing) == 1, f"controller ingress {ing}")
        elif v["networkPolicy"]["webhookFrom"]:
            c.check(ing and ing[0] == {"from": v["networkPolicy"]["webhookFrom"], "ports": [{"port": 8443, "protocol": "TCP"}]},
                    f"ingress to 8443 only from webhookFrom: {ing[:1]}")
        else:
            c.check(ing and ing[0] == {"ports": [{"port": 8443, "protocol": "TCP"}]}, "ingress to 8443 from anywhere")
        for rule in ing[0 if is_ctl else 1:]:
            c.check(rule.get("from") and [p["port"] for p in rule["ports"]] == [8080], "admin port only from configured peers")
        egress_ports = {p["port"] for r in s.get("egress", []) for p in r.get("ports", [])}
        if v["standalone"]:
            c.check(s.get("egress") == [], "standalone NetworkPolicy must deny all egress")
        else:
            want_ports = set(v["networkPolicy"]["apiServer"]["ports"]) | {53}
            if is_ctl and v["config"].get("credentialProbe"):
                want_ports |= set(v["networkPolicy"]["registries"]["ports"])
            if is_ctl and providers(v):
                # The plugins' cloud endpoints: one rule of its own, to networkPolicy.credentialProviders.
                pe = v["networkPolicy"]["credentialProviders"]
                want_ports |= set(pe["ports"])
                want_rule = {"ports": [{"port": p, "protocol": "TCP"} for p in pe["ports"]]}
                if pe["cidrs"]:
                    want_rule["to"] = [{"ipBlock": {"cidr": x}} for x in pe["cidrs"]]
                c.check(s.get("egress", [])[-1:] == [want_rule], f"controller egress for credentialProviders {s.get('egress', [])[-1:]} != {want_rule}")
            c.check(egress_ports == want_ports, f"egress ports {egress_ports}, want {want_ports}")
            c.check(all("ports" in r for r in s.get("egress", [])), "an egress rule without ports")


def run_case(c):
    check_schema(c)
    check_common(c)
    cfg = check_config(c)
    svc = check_service(c)
    dep = check_deployment(c, cfg)
    check_webhook(c, svc)
    check_pdb(c, dep)
    check_controller(c, dep)
    check_rbac(c)
    check_tls(c, svc)
    check_optional(c)


def merge(base, over):
    out = dict(base)
    for k, x in (over or {}).items():
        if x is None:
            out.pop(k, None)
        elif isinstance(x, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], x)
        else:
            out[k] = x
    return out


def main():
    global failures, passes
    chart_dir, render_dir = sys.argv[1], sys.argv[2]
    defaults = yaml.safe_load(open(os.path.join(chart_dir, "values.yaml")))
    if kubernetes_validate is None:
        print("FAIL kubernetes-validate is not installed")
        sys.exit(1)
    for fn in sorted(os.listdir(render_dir)):
        if not fn.endswith(".yaml") or "@" not in fn:
            continue
        case, kube = fn[:-5].split("@")
        values = merge(defaults, yaml.safe_load(open(os.path.join(chart_dir, "ci", f"{case}-values.yaml"))))
        docs = [d for d in yaml.safe_load_all(open(os.path.join(render_dir, fn))) if d]
        c = Case(case, kube, docs, values)
        try:
            run_case(c)
        except Exception as e:  # a crash in a check is a failure of that case, not of the run
            c.errors.append(f"check crashed: {type(e).__name__}: {e}")
        if c.errors:
            failures += 1
            print(f"FAIL manifests {case} @ Kubernetes {kube}")
            for e in c.errors:
                print(f"       {e}")
        else:
            passes += 1
            print(f"PASS manifests {case} @ Kubernetes {kube} ({len(docs)} objects)")
    print(f"manifests: {passes} passed, {failures} failed")
    sys.exit(1 if failures or not passes else 0)


if __name__ == "__main__":
    main()
