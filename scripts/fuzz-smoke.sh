#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (default 20 s each). Installs cargo-fuzz if
# missing; needs the nightly toolchain (cargo-fuzz's sanitizer flags).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${FUZZ_SECONDS:-20}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
for t in jsonrpc_policy egress_parsers policy_load; do
  echo "--- fuzz $t for ${secs}s"
  mkdir -p "corpus/$t"
  cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=1024 -max_len=65536
done
echo "fuzz smoke passed"
