#!/usr/bin/env bash
# Measures what the stdio proxy adds, against the same mock MCP server driven directly, in one
# run: round-trip latency (p50/p99), pipelined throughput, the same with 4 DLP patterns, idle
# RSS, and peak RSS after a 100 MB line. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20000}          # latency samples per configuration
T=${T:-200000}         # pipelined requests
BIG=${BIG:-104857600}  # 100 MB line
cargo build --release --quiet --bin aip --example mock_mcp_server --example bench_proxy
aip=$PWD/target/release/aip
mock=$PWD/target/release/examples/mock_mcp_server
drv=$PWD/target/release/examples/bench_proxy
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/plain.yaml" <<'P'
apiVersion: aip.io/v1alpha1
kind: AgentPolicy
metadata: {name: bench}
spec:
  allowed_tools: [echo, read_file, list_directory, search_files]
  tool_rules:
    - tool: echo
      allow_args:
        text: "^[a-z ,0-9]+$"
        path: "^/tmp/work/"
    - tool: delete_file
      action: block
  protected_paths: [~/.ssh, /etc/shadow]
P
cp "$tmp/plain.yaml" "$tmp/dlp.yaml"
cat >> "$tmp/dlp.yaml" <<'P'
  dlp:
    patterns:
      - {name: AWS Key, regex: "AKIA[A-Z0-9]{16}"}
      - {name: Email, regex: "[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\\.[a-zA-Z]{2,}"}
      - {name: GitHub Token, regex: "ghp_[A-Za-z0-9]{36}"}
      - {name: Private Key, regex: "-----BEGIN [A-Z ]*PRIVATE KEY-----"}
P
proxied() { echo "$aip" run --no-sandbox --policy "$1" --audit "$tmp/audit-$2.jsonl" -- "$mock"; }
j() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

# Default: the client and the server block in read(2) as real ones do; aip polls (--poll-us).
direct=$("$drv" latency "$N" -- "$mock")
plain=$("$drv" latency "$N" -- $(proxied "$tmp/plain.yaml" lat))
dlp=$("$drv" latency "$N" -- $(proxied "$tmp/dlp.yaml" latdlp))
# CPU-warm: client and server poll too, so idle-CPU wake-ups (large on VMs) are out of both
# measurements and the difference is what aip itself adds.
wdirect=$(BENCH_SPIN_US=200 "$drv" latency "$N" -- "$mock" --spin-us 200)
wplain=$(BENCH_SPIN_US=200 "$drv" latency "$N" -- $(proxied "$tmp/plain.yaml" wlat) --spin-us 200)
wdlp=$(BENCH_SPIN_US=200 "$drv" latency "$N" -- $(proxied "$tmp/dlp.yaml" wlatdlp) --spin-us 200)
tput_direct=$("$drv" throughput "$T" -- "$mock")
tput=$("$drv" throughput "$T" -- $(proxied "$tmp/plain.yaml" tput))
rss=$("$drv" rss "$BIG" -- $(proxied "$tmp/plain.yaml" rss))

add() { python3 -c "print(f'{float(\"$1\")-float(\"$2\"):+.1f}')"; }
row() { # label, direct json, proxied json, key
  echo "| $1 | $(j "$2" "$4") | $(j "$3" "$4") | $(add "$(j "$3" "$4")" "$(j "$2" "$4")") |"
}
echo "| measure | direct | through aip | added |"
echo "|---|---|---|---|"
row "round trip p50 (µs)" "$direct" "$plain" p50_us
row "round trip p99 (µs)" "$direct" "$plain" p99_us
row "round trip p50, 4 DLP patterns (µs)" "$direct" "$dlp" p50_us
row "round trip p99, 4 DLP patterns (µs)" "$direct" "$dlp" p99_us
row "CPU-warm round trip p50 (µs)" "$wdirect" "$wplain" p50_us
row "CPU-warm round trip p99 (µs)" "$wdirect" "$wplain" p99_us
row "CPU-warm round trip p50, 4 DLP patterns (µs)" "$wdirect" "$wdlp" p50_us
row "CPU-warm round trip p99, 4 DLP patterns (µs)" "$wdirect" "$wdlp" p99_us
echo "| pipelined messages/s (requests + responses) | $(j "$tput_direct" messages_per_s) | $(j "$tput" messages_per_s) | |"
echo "| aip RSS idle (KiB) | | $(j "$rss" idle_rss_kib) | |"
echo "| aip peak RSS after a $((BIG/1048576)) MiB line (KiB) | | $(j "$rss" peak_rss_kib) | |"
echo
echo "raw: direct=$direct plain=$plain dlp=$dlp wdirect=$wdirect wplain=$wplain wdlp=$wdlp tput_direct=$tput_direct tput=$tput rss=$rss"
