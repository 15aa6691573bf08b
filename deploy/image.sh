#!/usr/bin/env bash
# Builds the `genie` image where no registry is reachable: the base image from Debian's
# packages (deploy/base-image.sh), then the Dockerfile's `prebuilt` target around a genie
# binary built on the host (same Debian release, so the same glibc). The classic builder:
# Docker packages without buildx have no BuildKit.
#
#   deploy/image.sh [GENIE_BINARY] [TAG]     (defaults: target/release/genie, genie:local)
#   BAKE_MODEL=1 deploy/image.sh ...         the host's cached default model inside the image
#                                            (a new /models volume starts with it)
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release/genie}"
tag="${2:-genie:local}"
[ -x "$bin" ] || { echo "no genie binary at $bin: build it first (cargo build --release -p genie)" >&2; exit 1; }
bash deploy/base-image.sh
mkdir -p deploy/bin
# Without debug info: a smaller image and build context.
strip -o deploy/bin/genie "$bin" 2>/dev/null || cp "$bin" deploy/bin/genie
mkdir -p deploy/model
trap 'rm -f deploy/bin/genie deploy/model/*.gguf' EXIT
if [ "${BAKE_MODEL:-0}" = 1 ]; then
  # `genie model fetch` prints the cached path (and fetches it when missing).
  model=$("$bin" model fetch | awk 'END {print $1}')
  cp "$model" deploy/model/
fi
start=$(date +%s)
DOCKER_BUILDKIT=0 docker build -q --target prebuilt -t "$tag" . >/dev/null
echo "image $tag built in $(( $(date +%s) - start )) s ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
