#!/usr/bin/env bash
# Runs every cargo-fuzz target for FUZZ_SECONDS (default 60) each, starting from a copy of
# the committed seed corpus (fuzz/corpus is left as committed); a crash, panic, timeout or
# over-limit allocation fails the run. Stable rustc takes cargo-fuzz's nightly flags with
# RUSTC_BOOTSTRAP=1 (fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${FUZZ_SECONDS:-60}"
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cargo fuzz build
for target in kv_wire request_body gguf_meta; do
  work=$(mktemp -d)
  cp -r "corpus/$target/." "$work/"
  echo "== fuzz $target (${seconds}s)"
  cargo fuzz run "$target" "$work" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=256 \
    -print_final_stats=1
  rm -rf "$work"
done
