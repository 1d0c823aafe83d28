# syntax=docker/dockerfile:1
# Static pullsecret-injector binary on an empty image, for linux/amd64 and linux/arm64.
#
# Needs BuildKit: RUN --mount=type=cache, COPY --chmod and the platform arguments
# (BUILDPLATFORM, BUILDARCH, TARGETARCH) do not exist in the legacy builder. Docker 23+ and
# `docker buildx` use BuildKit; older Docker: DOCKER_BUILDKIT=1 docker build ...
#   docker build -t REGISTRY/pullsecret-injector:0.1.0 .      (this machine's architecture)
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/pullsecret-injector:0.1.0 --push .
# The build stage runs on the build machine and cross-compiles for TARGETARCH (no emulation).
# Without a container engine: scripts/build-static.sh, then scripts/build-image.sh, which
# reads this file's final stage (docs/install.md, "The injector's image").
# The in-cluster client reaches the API server by the KUBERNETES_SERVICE_HOST address and trusts
# the service account CA, so the image needs no CA roots, shell, libc or /etc files.

FROM --platform=$BUILDPLATFORM rust:1.95-bookworm AS build
ARG BUILDARCH
ARG TARGETARCH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Cross-compiling: the target's C compiler and libc (ring compiles C; the link is static).
# hadolint ignore=DL3008
RUN if [ "$TARGETARCH" != "$BUILDARCH" ]; then \
      case "$TARGETARCH" in \
        arm64) cross=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross) ;; \
        amd64) cross=(gcc-x86-64-linux-gnu libc6-dev-amd64-cross) ;; \
        *) echo "TARGETARCH $TARGETARCH: amd64 or arm64" >&2; exit 1 ;; \
      esac; \
      apt-get update && apt-get install -y --no-install-recommends "${cross[@]}" \
        && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY scripts/build-static.sh ./scripts/
# glibc, statically linked (+crt-static, scripts/build-static.sh): nothing to load at run time.
# Name resolution through NSS modules is unavailable in such a binary; in-cluster config uses
# an IP address. TARGETARCH amd64 -> x86_64-unknown-linux-gnu, arm64 -> aarch64-unknown-linux-gnu.
ENV CARGO_TERM_COLOR=never
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,id=pullsecret-injector-target-$TARGETARCH,target=/src/target \
    OUT=/pullsecret-injector scripts/build-static.sh "$TARGETARCH"

FROM scratch
LABEL org.opencontainers.image.title="pullsecret-injector" \
      org.opencontainers.image.description="Mutating admission webhook that adds imagePullSecrets by image registry" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build --chown=0:0 --chmod=0555 /pullsecret-injector /pullsecret-injector
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["/pullsecret-injector"]
CMD ["serve"]
