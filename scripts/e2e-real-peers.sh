#!/usr/bin/env bash
# End to end with real MCP peers: the npm reference filesystem server and the PyPI time server,
# driven by the official Python SDK client through `aip run`, with allowed and blocked calls.
# Usage: scripts/e2e-real-peers.sh [AIP_BINARY]   (default: target/release/aip, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
aip=${1:-target/release/aip}
[ -x "$aip" ] || cargo build --release --quiet --bin aip
aip=$(cd "$(dirname "$aip")" && pwd)/$(basename "$aip")
peers=$(scripts/install-peers.sh)
py=$peers/py/bin/python
work=$(mktemp -d /tmp/aip-e2e.XXXXXX); trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
mkdir -p "$work/root"
echo "hello from a real server" > "$work/root/a.txt"
echo "aws_access_key_id = AKIAIOSFODNN7EXAMPLE" > "$work/root/creds.txt"
fails=0
check() {  # name, policy, steps, mode, server command...
  local name=$1 policy=$2 steps=$3 mode=$4; shift 4
  echo "--- $name"
  if "$py" scripts/mcp_client.py --mode "$mode" "$steps" -- \
      "$aip" run ${AIP_E2E_FLAGS:-} --policy "$policy" --audit "$work/audit.jsonl" -- "$@"; then
    echo "PASS $name"
  else
    echo "FAIL $name"; fails=$((fails+1))
  fi
}

check "filesystem server (npm), read-only policy" policies/filesystem-readonly.yaml '[
  {"list_tools": {"include": ["read_text_file", "list_directory"], "exclude": ["write_file", "edit_file", "move_file"]}},
  {"call": "read_text_file", "args": {"path": "'"$work"'/root/a.txt"}, "contains": "hello from a real server"},
  {"call": "read_text_file", "args": {"path": "'"$work"'/root/creds.txt"}, "contains": "[REDACTED:AWS Key]", "not_contains": "AKIAIOSFODNN7EXAMPLE"},
  {"call": "write_file", "args": {"path": "'"$work"'/root/b.txt", "content": "x"}, "expect": -32001},
  {"call": "read_text_file", "args": {"path": "~/.ssh/id_rsa"}, "expect": -32007},
  {"call": "list_directory", "args": {"path": "'"$work"'/root"}, "contains": "a.txt"}
]' auto "$peers/node/node_modules/.bin/mcp-server-filesystem" "$work/root"

for mode in auto legacy; do
  check "time server (PyPI), mode $mode" policies/time.yaml '[
    {"list_tools": {"include": ["get_current_time", "convert_time"]}},
    {"call": "get_current_time", "args": {"timezone": "UTC"}, "contains": "UTC"},
    {"call": "convert_time", "args": {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Europe/Paris"}, "contains": "Europe/Paris"},
    {"call": "convert_time", "args": {"source_timezone": "UTC", "time": "12:00; rm -rf /", "target_timezone": "Europe/Paris"}, "expect": -32001}
  ]' "$mode" "$peers/py/bin/mcp-server-time"
done

[ -s "$work/audit.jsonl" ] || { echo "FAIL no audit records"; fails=$((fails+1)); }
blocks=$(grep -c '"decision":"BLOCK"' "$work/audit.jsonl" || true)
echo "audit: $(wc -l < "$work/audit.jsonl") records, $blocks blocks"
[ "$blocks" -ge 4 ] || { echo "FAIL expected at least 4 BLOCK records"; fails=$((fails+1)); }
if [ "$fails" -ne 0 ]; then echo "$fails end-to-end check(s) failed"; exit 1; fi
echo "all end-to-end checks passed"
