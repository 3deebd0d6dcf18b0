# syntax=docker/dockerfile:1
#
# peerjsd container image.
#
#   docker build -t peerjsd .
#   docker run --rm -p 9000:9000 peerjsd
#   docker run --rm -p 9000:9000 -e PEERJSD_ROOMS=token peerjsd
#   docker run --rm -p 9000:9000 peerjsd --rooms token --proxied    # extra args are appended
#
# Configuration comes from the environment (PEERJSD_<NAME>, PORT, PEERSERVER_PATH,
# ALLOWED_ORIGINS, RUST_LOG), from flags appended to `docker run … peerjsd`, or from a config
# file mounted over /etc/peerjsd/peerjsd.toml. The image passes no flags of its own: a flag
# would beat the environment. tests/deploy/docker-smoke.sh runs the binary the way this file
# says (ENTRYPOINT, ENV, USER, HEALTHCHECK, STOPSIGNAL) without Docker.

# ---- builder -------------------------------------------------------------------------------
# Same Debian release as the runtime stage, so the binary links against the same glibc.
FROM rust:1-bookworm AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /build

# Dependencies first, against stub sources: this layer is reused until Cargo.toml or
# Cargo.lock change. bench/ is a workspace member, so its manifest and a stub target must exist
# for cargo to load the workspace; only the peerjsd package is built.
COPY Cargo.toml Cargo.lock ./
COPY bench/Cargo.toml bench/Cargo.toml
RUN mkdir -p src bench/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs bench/src/lib.rs \
    && cargo build --release --locked -p peerjsd --bin peerjsd \
    && rm -rf src

# The real sources. COPY keeps the files' modification times, which may be older than the stub
# build's outputs: touch them so cargo rebuilds the crate, then make sure the result is the
# real server (the stub prints no version).
COPY src src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked -p peerjsd --bin peerjsd \
    && ./target/release/peerjsd --version | grep -q '^peerjsd '

# ---- runtime -------------------------------------------------------------------------------
# debian:bookworm-slim rather than gcr.io/distroless/cc-debian12: the HEALTHCHECK needs an HTTP
# client and a shell. Distroless has neither, and peerjsd has no self-check subcommand; an
# exec-form check there could only probe a hard-coded port, so PORT/PEERJSD_PORT would break
# it. The slim image gives /bin/sh plus Debian's curl (about 10 MB more, security updates
# through Debian), and the check reads the port the same way the server does.
FROM debian:bookworm-slim

# Versions are not pinned: Debian replaces a package in bookworm (and drops the old version)
# with each security update, so a pin would break the build; the base image tag fixes the
# release, the rebuild picks up fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 peerjsd \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin peerjsd

COPY --from=builder /build/target/release/peerjsd /usr/local/bin/peerjsd
# Every key at its default, so it changes nothing until you mount your own file over it.
COPY config/peerjsd.toml /etc/peerjsd/peerjsd.toml

# Only settings that cannot shadow yours: the config file's path (a PEERJSD_* variable beats a
# key in it, a --config flag beats this), the log filter, and glibc's allocator told to keep a
# fixed mmap threshold, so large buffers (megabyte messages) go back to the system when freed
# instead of staying resident after a burst or an attack. No PORT or PEERJSD_PORT here: they
# would beat the port of a mounted config file.
ENV PEERJSD_CONFIG=/etc/peerjsd/peerjsd.toml \
    RUST_LOG=info \
    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072

# Numeric, so Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 9000
# peerjsd drains on SIGTERM: /health turns 503, sockets close with 1001, exit 0 within
# --shutdown-timeout (10s). Give `docker stop` longer than that: docker stop -t 15.
STOPSIGNAL SIGTERM

# /health is at the server root whatever --path is. The port is read as the server reads it
# (PEERJSD_PORT, then PORT, then 9000); https (certificate not verified: it is the local host)
# when PEERJSD_SSLCERT is set. A port or TLS set only by a flag or the config file needs
# `docker run --health-cmd …` to match.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/bin/sh", "-c", "curl -fsSk --max-time 3 -o /dev/null http${PEERJSD_SSLCERT:+s}://localhost:${PEERJSD_PORT:-${PORT:-9000}}/health || exit 1"]

# Exec form: peerjsd is PID 1 and gets SIGTERM itself; `docker run IMAGE --flag …` appends.
ENTRYPOINT ["/usr/local/bin/peerjsd"]
