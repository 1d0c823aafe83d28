# syntax=docker/dockerfile:1
# Static pullsecret-injector binary on an empty image.
#   docker build -t REGISTRY/pullsecret-injector:0.1.0 .
# The in-cluster client reaches the API server by the KUBERNETES_SERVICE_HOST address and trusts
# the service account CA, so the image needs no CA roots, shell, libc or /etc files.

FROM rust:1.95-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
# glibc, statically linked (+crt-static): nothing to load at run time. Name resolution
# through NSS modules is unavailable in such a binary; in-cluster config uses an IP address.
ENV RUSTFLAGS="-C target-feature=+crt-static" \
    CARGO_TERM_COLOR=never
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-gnu \
 && cp target/x86_64-unknown-linux-gnu/release/pullsecret-injector /pullsecret-injector \
 && if readelf -d /pullsecret-injector | grep -q NEEDED; then echo "binary is not static" >&2; exit 1; fi

FROM scratch
LABEL org.opencontainers.image.title="pullsecret-injector" \
      org.opencontainers.image.description="Mutating admission webhook that adds imagePullSecrets by image registry" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build --chown=0:0 --chmod=0555 /pullsecret-injector /pullsecret-injector
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["/pullsecret-injector"]
CMD ["serve"]
