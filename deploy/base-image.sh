#!/usr/bin/env bash
# Makes the base image the Dockerfile's runtime stage starts FROM, where no registry can be
# pulled from: a Debian bookworm minbase root file system from Debian's own packages
# (debootstrap), imported as `debian:bookworm-slim`. On a connected machine `docker build`
# pulls the real one instead and this script is not needed. Does nothing when the image
# already exists (FORCE=1 rebuilds it).
#
#   deploy/base-image.sh            # needs root (debootstrap) and a Docker daemon
#   HOST_CA=1 deploy/base-image.sh  # also trust the CAs this host added locally
#                                   # (/usr/local/share/ca-certificates: a proxy that
#                                   # re-signs TLS), so pip in the containers reaches PyPI
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
if [ "${HOST_CA:-0}" = 1 ] && ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  # The image's ca-certificates package (installed by the Dockerfile) adds them to the
  # system bundle, which Debian's pip uses.
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  echo "base image trusts the host's local CAs: $(ls /usr/local/share/ca-certificates/*.crt | wc -l) file(s)"
fi
tar -C "$root" -c . | docker import - "$tag" >/dev/null
echo "base image $tag imported in $(( $(date +%s) - start )) s ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
