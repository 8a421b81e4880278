# syntax=docker/dockerfile:1
# oneview-pagerduty-bridge container image.
#
#   docker build -t oneview-pagerduty-bridge .
#   docker run --rm -p 8080:8080 --read-only --tmpfs /tmp \
#     -v "$PWD/bridge.toml:/etc/oneview-pagerduty-bridge/config.toml:ro" \
#     oneview-pagerduty-bridge run --config /etc/oneview-pagerduty-bridge/config.toml
#
# Stages: `build` compiles (dependencies in their own cached layer), `rootfs` assembles the
# runtime tree with scripts/image-rootfs, and the final stage is FROM scratch: the binary, the
# libraries it links, CA certificates, nothing else (no shell, no package manager).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# The paths below assume this target directory; pinned so that a CARGO_TARGET_DIR set in the
# builder's environment cannot move the binary elsewhere.
ENV CARGO_TARGET_DIR=/src/target
# Dependencies first: this layer is rebuilt only when Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src \
 && printf 'fn main() {}\n' > src/main.rs \
 && : > src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src target/release/.fingerprint/oneview-pagerduty-bridge-* target/release/deps/*bridge*
COPY src ./src
RUN cargo build --release --locked

FROM build AS rootfs
COPY scripts/image-rootfs /usr/local/bin/image-rootfs
RUN image-rootfs /src/target/release/oneview-pagerduty-bridge /out

FROM scratch AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="oneview-pagerduty-bridge" \
      org.opencontainers.image.description="Watches HPE OneView appliances and pages on-call engineers through PagerDuty Events API v2" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="docs/DEPLOYMENT.md"
COPY --from=rootfs /out/rootfs/ /
COPY --from=rootfs --chown=65532:65532 /out/writable/ /
# State (redb file) and temporary files live on volumes so the root filesystem can be read-only.
VOLUME ["/var/lib/oneview-pagerduty-bridge", "/tmp"]
USER 65532:65532
# So that `kubectl exec … oneview-pagerduty-bridge check-config` finds the binary by name.
ENV PATH=/usr/local/bin
EXPOSE 8080
# Exec form, no shell: the binary probes its own /health.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/oneview-pagerduty-bridge", "healthcheck", "--url", "http://127.0.0.1:8080/health", "--timeout", "3s"]
ENTRYPOINT ["/usr/local/bin/oneview-pagerduty-bridge"]
CMD ["run", "--role", "all"]
