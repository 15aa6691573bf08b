#!/usr/bin/env bash
# The local stack (compose.yaml) end to end:
#
#   deploy/stack.sh up [BINARY]   image (deploy/image.sh, when missing), cluster secret,
#                                 model volume, `up -d` with 2 prefill + 2 decode workers,
#                                 then waits until the gateway lists 4 healthy workers
#   deploy/stack.sh down          stops and removes the containers (the model volume stays)
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

up() {
  local bin="${1:-target/release/genie}"
  docker image inspect "${GENIE_IMAGE:-genie:local}" >/dev/null 2>&1 || bash deploy/image.sh "$bin" "${GENIE_IMAGE:-genie:local}"
  secret
  seed_models
  local start
  start=$(date +%s)
  "${compose[@]}" up -d --scale prefill=2 --scale decode=2
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
  down) "${compose[@]}" down ;;
  secret) secret ;;
  *) echo "usage: deploy/stack.sh up [BINARY] | down | secret" >&2; exit 2 ;;
esac
