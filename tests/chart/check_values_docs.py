#!/usr/bin/env python3
"""values.yaml, values.schema.json and docs/chart-values.md describe the same keys.

Usage: check_values_docs.py CHART_DIR VALUES_DOC
Checks: every key in values.yaml has a comment line above it; every key is in the schema and
every schema property is in values.yaml (besides `global`); every key, or a parent of it, is
documented as `key` in VALUES_DOC. Prints PASS/FAIL lines; exits 1 on failure.
"""
import json
import re
import sys

import yaml

chart, doc_path = sys.argv[1], sys.argv[2]
text = open(f"{chart}/values.yaml").read()
values = yaml.safe_load(text)
schema = json.load(open(f"{chart}/values.schema.json"))
doc = open(doc_path).read()
failures = 0


def report(ok, msg, missing):
    global failures
    print(("PASS " if ok else "FAIL ") + msg + ("" if ok else f": {', '.join(missing)}"))
    failures += not ok


def paths(d, prefix=""):
    for k, v in d.items():
        p = f"{prefix}.{k}" if prefix else k
        yield p
        if isinstance(v, dict):
            yield from paths(v, p)


def schema_paths(s, prefix=""):
    for k, v in (s.get("properties") or {}).items():
        p = f"{prefix}.{k}" if prefix else k
        yield p
        yield from schema_paths(v, p)


lines = text.splitlines()
uncommented = []
for i, line in enumerate(lines):
    if re.match(r"^\s*[A-Za-z][\w.-]*:", line):
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        if j < 0 or not lines[j].lstrip().startswith("#"):
            uncommented.append(f"line {i + 1} {line.strip()}")
report(not uncommented, "values.yaml: every key has a comment", uncommented)

vp = set(paths(values))
# resources.* (and controller.resources.*) are free-form in the schema (a Kubernetes ResourceRequirements).
sp = set(schema_paths(schema))
free_form = re.compile(r"^(controller\.)?resources\.")
not_in_schema = sorted(p for p in vp if p not in sp and not free_form.match(p))
not_in_values = sorted(p for p in sp - vp if p != "global" and not free_form.match(p)
                       and not any(p.startswith(f"{q}.") for q in ("tls.certManager.issuerRef",)))
report(not not_in_schema and not not_in_values, "values.schema.json and values.yaml have the same keys",
       not_in_schema + [f"schema only: {p}" for p in not_in_values])

def leaves(d, prefix=""):
    for k, v in d.items():
        p = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and v:
            yield from leaves(v, p)
        else:
            yield p


undocumented = sorted(p for p in leaves(values) if not any(f"`{q}`" in doc for q in
                      [".".join(p.split(".")[:n]) for n in range(1, p.count(".") + 2)]))
report(not undocumented, f"{doc_path}: every values key documented", undocumented)
sys.exit(1 if failures else 0)
