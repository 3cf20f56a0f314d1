# Multi-stage build: compile with the Rust toolchain, run on slim Debian as a non-root user.
# The build steps are the README's: install cmake, then `cargo build --release --locked`.
FROM rust:1-bookworm AS build
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake
WORKDIR /src
COPY . .
# A custom binary (docs/plugins.md) builds the same way:
#   docker build --build-arg PACKAGE=tollgate-example-custom-plugin --build-arg BIN=tollgate-hmac .
ARG PACKAGE=tollgate
ARG BIN=tollgate
RUN cargo build --release --locked -p "$PACKAGE" --bin "$BIN" && cp "target/release/$BIN" /tollgate

FROM debian:bookworm-slim
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /nonexistent tollgate \
    && mkdir -p /etc/tollgate
COPY --from=build /tollgate /usr/local/bin/tollgate
# The default config keeps the admin listener (/metrics, /healthz, /readyz, /cache/purge) on
# the container's loopback, where HEALTHCHECK reaches it. To scrape it from outside, mount a
# config with admin_listen = "0.0.0.0:9090" and admin_token = "${TOLLGATE_ADMIN_TOKEN}" (a
# token is required off loopback) and run with -e TOLLGATE_ADMIN_TOKEN=... -p 9090:9090;
# see docs/operations.md.
COPY conf/tollgate.toml /etc/tollgate/tollgate.toml
USER tollgate
EXPOSE 8080 9090
# SIGTERM drains in-flight requests for server.shutdown_timeout_seconds.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=2s --retries=3 CMD curl -fsS http://127.0.0.1:9090/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["run", "-c", "/etc/tollgate/tollgate.toml"]
