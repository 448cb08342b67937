#!/usr/bin/env bash
# Egress benchmark: added connect latency through the HTTP proxy, bulk throughput through the
# proxy on loopback, and DNS stub queries per second. Needs root (it creates a network namespace
# for the sandbox side; the upstream is this machine's loopback). Prints the measurements; the
# RESULT lines are the numbers for the README. Goals: latency <= 0.5 ms, throughput >= 1 GB/s,
# DNS >= 50k queries/s.
#
# Knobs: AIP_BENCH_BULK_MIB (default 4096), AIP_BENCH_CONNECTS (2000), AIP_BENCH_DNS_SECS (3),
# CARGO_TARGET_DIR as usual. Builds the test binary with the release profile once.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "bench-egress: needs root (network namespaces)" >&2
    exit 1
fi
echo "machine: $(nproc) CPUs, $(uname -r)"
cargo test --release --test all -- --ignored --exact suite::egress::bench_egress --nocapture --test-threads 1 2>&1 |
    grep -E 'RESULT|connect\+first|bulk [0-9]|test result|error|panicked'
