# syntax=docker/dockerfile:1
# Multi-stage build: dependencies are cooked in their own layer (cargo-chef), the
# runtime image holds only the binary, CA certificates and an unprivileged user.
# Pin each FROM to a digest (tag@sha256:...) when you build for production:
#   docker buildx imagetools inspect rust:1.95-bookworm
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS plan
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=plan /src/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json
COPY . .
# migrations/ and config/ are compiled into the binary (sqlx::migrate!, include_str!).
RUN cargo build --release --locked --bin airlock

FROM ${RUNTIME_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/airlock --shell /usr/sbin/nologin airlock \
 && mkdir -p /var/lib/airlock /etc/airlock \
 && chown airlock /var/lib/airlock
COPY --from=build /src/target/release/airlock /usr/local/bin/airlock
COPY config/default.toml /etc/airlock/default.toml.example
# Production mode: the server refuses to start without AIRLOCK_MASTER_KEY_FILE (or
# AIRLOCK_MASTER_KEY) and an https AIRLOCK_PUBLIC_URL. Mount your own settings at
# /etc/airlock/airlock.toml and set AIRLOCK_CONFIG=/etc/airlock/airlock.toml.
ENV AIRLOCK_MODE=production \
    AIRLOCK_LISTEN=0.0.0.0:8080 \
    AIRLOCK_DATA_DIR=/var/lib/airlock \
    AIRLOCK_DATABASE_URL=sqlite:///var/lib/airlock/airlock.db \
    AIRLOCK_LOG_FORMAT=json
USER 10001
VOLUME /var/lib/airlock
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["/usr/local/bin/airlock", "healthcheck", "--url", "http://127.0.0.1:8080"]
ENTRYPOINT ["/usr/local/bin/airlock"]
CMD ["serve"]
