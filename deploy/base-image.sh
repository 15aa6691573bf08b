#!/usr/bin/env bash
# Makes the base image the Dockerfile's runtime stage starts FROM, where no registry can be
# pulled from: a Debian bookworm minbase root file system from Debian's own packages
# (debootstrap), imported as `debian:bookworm-slim`. On a connected machine `docker build`
# pulls the real one instead and this script is not needed. Does nothing when the image
# already exists (FORCE=1 rebuilds it).
#
#   deploy/base-image.sh            # needs root (debootstrap) and a Docker daemon
set -euo pipefail
tag="${BASE_IMAGE:-debian:bookworm-slim}"
if [ -z "${FORCE:-}" ] && docker image inspect "$tag" >/dev/null 2>&1; then
  echo "base image $tag exists"
  exit 0
fi
command -v debootstrap >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq debootstrap; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
start=$(date +%s)
debootstrap --variant=minbase bookworm "$root" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
# As the slim image: no documentation or caches.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
  "$root"/usr/share/man/* "$root"/usr/share/locale/*
tar -C "$root" -c . | docker import - "$tag" >/dev/null
echo "base image $tag imported in $(( $(date +%s) - start )) s ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
