#!/usr/bin/env python3
"""Writes the seed corpora (run from anywhere; the output is committed).

image_parse, keyring: real-world references and `--docker-server` forms, as text.
review_answer: the AdmissionReviews of tests/fixtures (raw mode), and a few structured inputs.
rule_match: structured inputs. Structured inputs are the bytes `arbitrary` decodes field by
field: every field is a u8 (or an array of them), read in declaration order (see the structs in
fuzz_targets/rule_match.rs and src/review.rs); `FUZZ_SHOW=1` prints what a seed decodes to.
"""
import glob, os, shutil

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(os.path.dirname(here))

def write(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(here, target, name), "wb") as f:
        f.write(data)

SHA = "sha256:" + "f" * 64
images = [
    "nginx", "nginx:1.27", "library/nginx", "docker.io/library/nginx:latest",
    "index.docker.io/acme/app", "registry-1.docker.io/acme/app", "bitnami/redis:7.2",
    "ghcr.io/acme/api:v1", "ghcr.io/acme-evil/api", "quay.io/prometheus/node-exporter:v1.8.0",
    "registry.k8s.io/pause:3.9", "mcr.microsoft.com/dotnet/aspnet:8.0",
    "123456789012.dkr.ecr.eu-west-1.amazonaws.com/api:2", "europe-docker.pkg.dev/p/repo/img",
    "localhost:5000/app:dev", "registry:5000/app", "10.0.0.1:5000/app", "[::1]:5000/app:1",
    "[2001:db8::1]/app", "Registry.Example.COM/app", "a.b/c__d/e-----f/g.h_i",
    f"ubuntu@{SHA}", f"ghcr.io/acme/api:1.2@{SHA}", "gcr.io/distroless/static:nonroot",
    "public.ecr.aws/docker/library/alpine:3.20", "nvcr.io/nvidia/cuda:12.4.1-base-ubuntu22.04",
    f"registry.gitlab.com/group/sub/project/image@sha512:{'0f' * 64}",
]
for i, ref in enumerate(images):
    write("image_parse", f"ref-{i:02}", ref)

keys = [
    ("https://index.docker.io/v1/", "nginx"),
    ("https://index.docker.io/v1/", "registry-1.docker.io/acme/app"),
    ("docker.io", "docker.io/library/nginx"),
    ("registry-1.docker.io", "nginx"),
    ("ghcr.io", "ghcr.io/acme/api:v1"),
    ("https://ghcr.io/v2/acme", "ghcr.io/acme-evil/api"),
    ("127.0.0.1:5000", "127.0.0.1:5000/private/app"),
    ("https://127.0.0.1:5000/v2/", "127.0.0.1:5000/private/app"),
    ("localhost:5000", "localhost/app"),
    ("*.dkr.ecr.*.amazonaws.com", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/api:2"),
    ("https://*.docker.io/path:1111", "prefix.docker.io/path:1111"),
    ("prefix.docker.*:8888", "prefix.docker.io:8888/foo/bar"),
    ("user:pass@ghcr.io", "ghcr.io/a/b"),
    ("http://registry.local:5000/v2/", "registry.local:5000/app"),
    ("reg[0-9].example.com", "reg1.example.com/app"),
    ("[::1]:5000", "[::1]:5000/app"),
    ("Registry.Example.com", "Registry.Example.com/app"),
    ("quay.io/team?x=1#frag", "quay.io/team/app"),
]
for i, (key, ref) in enumerate(keys):
    write("keyring", f"key-{i:02}", f"{key}\n{ref}")

for path in sorted(glob.glob(os.path.join(root, "tests", "fixtures", "*.json"))):
    shutil.copy(path, os.path.join(here, "review_answer", os.path.basename(path)))

# review_answer, structured (src/review.rs, PodInput). ImageIn: kind, index, len, free[10].
ALPHABET = b"abcdefghijklmnopqrstuvwxyz0123456789./:-_@Ae"  # src/review.rs
def image(kind, index, free=b""):
    free = bytes(ALPHABET.index(c) for c in free)
    return bytes([kind, index, len(free)]) + free.ljust(10, b"\0")
def container(img, policy=0, extra=0):
    return img + bytes([policy, extra])
def volume(kind, img, policy=0):
    return bytes([kind]) + img + bytes([policy])
def pod(api=0, uid=0, op=0, endpoint=0, ns=0, label=0, mirror=0, spec=0,
        init=(), main=(), vols=(), secrets_form=0, secrets=(), meta_ns=0):
    none_c, none_v = container(image(5, 0)), volume(4, image(5, 0))
    b = bytes([api, uid, op, endpoint, ns, label, mirror, spec])
    b += bytes([len(init)]) + b"".join(list(init) + [none_c] * (3 - len(init)))
    b += bytes([len(main)]) + b"".join(list(main) + [none_c] * (4 - len(main)))
    b += bytes([len(vols)]) + b"".join(list(vols) + [none_v] * (3 - len(vols)))
    b += bytes([secrets_form, len(secrets)]) + b"".join(list(secrets) + [b"\0\0"] * (4 - len(secrets)))
    return b + bytes([meta_ns])
# IMAGES indices: 0 nginx, 5 ghcr.io/acme/api:v1, 7 ghcr.io/acme/team/x, 9 ECR, 15 localhost:5000/dev/tool.
structured = {
    "pod-nginx": pod(main=[container(image(0, 0))]),
    "pod-init-sidecar-volume": pod(init=[container(image(0, 5), extra=1)], main=[container(image(0, 0))],
                                   vols=[volume(0, image(0, 9), policy=2)]),
    "pod-own-secrets": pod(main=[container(image(0, 7)), container(image(0, 15), policy=2)],
                           secrets_form=3, secrets=[bytes([0, 4]), bytes([4, 0]), bytes([5, 0])]),
    "pod-null-secrets-audit": pod(api=1, endpoint=1, main=[container(image(0, 0))], secrets_form=1),
    "pod-free-text": pod(main=[container(image(3, 2, b"acme/x:1"))], vols=[volume(0, image(4, 0, b"nginx@"))]),
}
for name, data in structured.items():
    assert data[0] not in b"{ \n\t\r", name
    write("review_answer", name, data)

# rule_match (fuzz_targets/rule_match.rs, Input). Label: kind, index, len, free[4].
def label(index):
    return bytes([0, index, 0, 0, 0, 0, 0])
def pieces(labels, port=0, path=(), case=0):
    b = bytes([len(labels) - 1]) + b"".join(list(labels) + [label(0)] * (4 - len(labels)))
    b += bytes([case, port, len(path)]) + bytes(list(path) + [0] * (3 - len(path)))
    return b
def how(host=0, which=0, suffix=0, case=0, port=0, path=0, extra=(0, 0), tag=0):
    return bytes([host, which, suffix, case, port, path, extra[0], extra[1], tag])
def other(p, globs=0, glob=(0, 0, 0, 0)):
    return p + bytes([globs]) + bytes(glob)
# LABELS: 0 docker 1 io 3 ghcr 4 acme 6 localhost 10 quay 16 127 18 1. SEGMENTS: 0 acme 1 acme-evil 2 acmex 8 nginx 10 api.
ghcr = [label(3), label(1)]
others = other(pieces([label(0), label(1)]), globs=1, glob=(0, 0, 0, 0)) + \
         other(pieces(ghcr, path=[0, 9])) + other(pieces([label(10), label(1)]), globs=3, glob=(1, 0, 0, 0))
rule_seeds = {
    "acme-vs-acme-evil": pieces(ghcr, path=[0]) + b"\0" + how(path=2, suffix=0) + pieces(ghcr) + others,
    "acme-vs-acmex": pieces(ghcr, path=[0]) + b"\0" + how(path=2, suffix=1) + pieces(ghcr) + others,
    "acme-subpath": pieces(ghcr, path=[0]) + b"\0" + how(path=0, extra=(10, 0)) + pieces(ghcr) + others,
    "docker-hub-library": pieces([label(0), label(1)]) + b"\0" + how(host=5, path=0, extra=(8, 0)) + pieces(ghcr) + others,
    "index-docker-io": pieces([label(2), label(0), label(1)]) + b"\0" + how(host=6, path=0, extra=(8, 0)) + pieces(ghcr) + others,
    "localhost-port": pieces([label(6)], port=2) + b"\0" + how(port=5, path=0) + pieces(ghcr) + others,
    "upper-case-host": pieces(ghcr, case=1) + b"\0" + how(case=1, path=0) + pieces(ghcr) + others,
    "ipv6": pieces([label(6)], port=2) + b"\3" + how(host=7, port=0, path=0) + pieces(ghcr) + others,
}
for name, data in rule_seeds.items():
    write("rule_match", name, data)
print("seeds written")
