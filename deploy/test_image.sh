#!/usr/bin/env bash
# The image on its own: the default model baked in (BAKE_MODEL=1 deploy/image.sh) serves
# from a fresh volume with no network at all, as uid 10001, and reports healthy; prints the
# image's size and the time from `docker run` to the first 200 from /health.
#
#   deploy/test_image.sh [GENIE_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release/genie}"
tag=genie:baked-test name=genie-image-test vol=genie-image-test
cleanup() { docker rm -f "$name" >/dev/null 2>&1 || true; docker volume rm -f "$vol" >/dev/null 2>&1 || true; docker rmi "$tag" >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup
BAKE_MODEL=1 bash deploy/image.sh "$bin" "$tag" 2>&1 | grep '^image'

in_container() { docker exec "$name" bash -c "$1"; }
get_health='exec 3<>/dev/tcp/127.0.0.1/8000 && printf "GET /health HTTP/1.0\r\n\r\n" >&3 && head -n 1 <&3'

start=$(date +%s%N)
docker run -d --name "$name" --network none -v "$vol:/models" "$tag" >/dev/null
ok=
for _ in $(seq 1 600); do
  if in_container "$get_health" 2>/dev/null | grep -q " 200 "; then ok=1; break; fi
  sleep 0.1
done
[ -n "$ok" ] || { docker logs "$name" | tail -20; echo "FAIL: not healthy after 60 s" >&2; exit 1; }
echo "ok: healthy $(( ($(date +%s%N) - start) / 1000000 )) ms after docker run, with no network (model baked in)"

uid=$(in_container 'id -u')
[ "$uid" = 10001 ] || { echo "FAIL: runs as uid $uid" >&2; exit 1; }
echo "ok: runs as uid 10001"

body='{"model":"SmolLM2-135M-Instruct","prompt":"The capital of France is","max_tokens":4,"temperature":0}'
answer=$(in_container "exec 3<>/dev/tcp/127.0.0.1/8000; printf 'POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: ${#body}\r\n\r\n%s' '$body' >&3; cat <&3")
echo "$answer" | head -n 1 | grep -q " 200 " || { echo "FAIL: $answer" >&2; exit 1; }
echo "ok: a completion from the baked model: $(echo "$answer" | tail -n 1 | python3 -c 'import json,sys; print(repr(json.load(sys.stdin)["choices"][0]["text"]))')"

for _ in $(seq 1 40); do
  [ "$(docker inspect -f '{{.State.Health.Status}}' "$name")" = healthy ] && break
  sleep 0.5
done
[ "$(docker inspect -f '{{.State.Health.Status}}' "$name")" = healthy ] || { echo "FAIL: HEALTHCHECK not healthy" >&2; exit 1; }
echo "ok: Docker's HEALTHCHECK says healthy"
