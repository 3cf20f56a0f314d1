# Multi-stage build: compile with the Rust toolchain, run on slim Debian as a non-root user.
# The build steps are the README's: install cmake, then `cargo build --release --locked`.
FROM rust:1-bookworm AS build
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /nonexistent tollgate \
    && mkdir -p /etc/tollgate
COPY --from=build /src/target/release/tollgate /usr/local/bin/tollgate
COPY conf/tollgate.toml /etc/tollgate/tollgate.toml
# The admin listener (/metrics, /healthz, /readyz, /cache/purge) must leave the container's
# loopback to be scraped; publish 9090 to trusted networks only.
RUN sed -i 's|^admin_listen = "127.0.0.1:9090"|admin_listen = "0.0.0.0:9090"|' /etc/tollgate/tollgate.toml \
    && grep -q '^admin_listen = "0.0.0.0:9090"' /etc/tollgate/tollgate.toml
USER tollgate
EXPOSE 8080 9090
# SIGTERM drains in-flight requests for server.shutdown_timeout_seconds.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=2s --retries=3 CMD curl -fsS http://127.0.0.1:9090/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["run", "-c", "/etc/tollgate/tollgate.toml"]
