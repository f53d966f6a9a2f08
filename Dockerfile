# syntax=docker/dockerfile:1
# Multi-stage build of spendguard: a Rust build stage (librdkafka is compiled by the
# rdkafka crate, hence the C toolchain) and a slim runtime stage with only the binary.

FROM rust:1.95-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake pkg-config \
      libssl-dev zlib1g-dev libcurl4-openssl-dev libsasl2-dev python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > benches/policy_eval.rs \
 && cargo build --release --locked --bin spendguard || true
COPY . .
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin spendguard \
 && strip target/release/spendguard

# openssl: the compose stack's `certs` service makes its demo CA with this image.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libssl3 zlib1g libsasl2-2 libcurl4 openssl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /nonexistent spendguard
COPY --from=builder /src/target/release/spendguard /usr/local/bin/spendguard
COPY policies /etc/spendguard/policies
USER spendguard
ENV SPENDGUARD_POLICIES=/etc/spendguard/policies \
    SPENDGUARD_HTTP_ADDR=0.0.0.0:8080 \
    SPENDGUARD_LOG=info
EXPOSE 8080
# Liveness on loopback: HTTPS when serve has a certificate (not verified here: the name
# in it is the service's, not 127.0.0.1; compose's own health check verifies it).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=5 \
  CMD if [ -n "${SPENDGUARD_TLS_CERT_FILE:-}" ]; then curl -fsSk https://127.0.0.1:8080/healthz; else curl -fsS http://127.0.0.1:8080/healthz; fi || exit 1
ENTRYPOINT ["spendguard"]
CMD ["serve"]
