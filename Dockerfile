# syntax=docker/dockerfile:1
# The presenced container image. Two stages: cargo builds the binary in a Rust
# image; the runtime is distroless (glibc, CA certificates, tzdata, no shell,
# no package manager), runs as the unprivileged user 65532, and writes
# nothing outside a --data-dir volume, so a read-only root file system works.
#
#   docker build -t presenced .          (or: podman build -t presenced .)
#
# The image listens on 0.0.0.0:50051 (gRPC, grpc-web, health, reflection,
# beacon) and 0.0.0.0:9464 (/metrics, /healthz, /readyz), because a container
# is reached from outside its own network namespace. A non-loopback address
# with authentication off is refused at start, so the image does not start
# until you configure auth (service keys, JWT keys, mTLS) or say
# --allow-unauthenticated-public. docs/DEPLOY.md has the details.
#
# Base images are build arguments, so a mirror or a digest can be swapped in:
#   --build-arg RUST_IMAGE=... --build-arg RUNTIME_IMAGE=...
# (deploy/container/local-base-images makes local stand-ins for machines that
# reach no registry.)
ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Only what the build reads (.dockerignore keeps the rest out), so a change
# to docs, clients or scripts does not rebuild.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto/ proto/
COPY third_party/ third_party/
COPY src/ src/
# The commit, for the presenced_build_info metric (the context has no .git):
# docker build --build-arg PRESENCED_GIT_REVISION=$(git rev-parse --short=12 HEAD) .
ARG PRESENCED_GIT_REVISION=unknown
ENV PRESENCED_GIT_REVISION=${PRESENCED_GIT_REVISION}
# The registry and target directories are build caches: a rebuild after a
# source change recompiles presenced, not its dependencies.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin presenced \
    && install -D -m 0755 target/release/presenced /out/presenced \
    && mkdir -p /out/data

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/presenced /usr/local/bin/presenced
# The --data-dir mount point, owned by the runtime user: a named volume
# mounted here starts with this ownership.
COPY --from=build --chown=65532:65532 /out/data /var/lib/presenced
USER 65532:65532
# Defaults as environment variables: flags override them (flag > env > file).
ENV PRESENCE_LISTEN=0.0.0.0:50051 \
    PRESENCE_METRICS_LISTEN=0.0.0.0:9464 \
    PRESENCE_LOG_FORMAT=json
EXPOSE 50051 9464
# SIGTERM starts the graceful shutdown (--shutdown-grace, default 10s).
STOPSIGNAL SIGTERM
LABEL org.opencontainers.image.title="presenced" \
      org.opencontainers.image.description="Real-time user presence service: gRPC, grpc-web, health, reflection" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/usr/local/bin/presenced"]
