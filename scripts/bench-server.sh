#!/usr/bin/env bash
# Throughput and latency of `POST /v1/validate` of the real `aip server` (release build) under a
# bounded load from a second process (wrk) on loopback — plaintext and TLS, an allowed and a
# blocked call — then the per-operation cost of identity tokens (`cargo bench --bench identity`, divan).
#
# Usage: scripts/bench-server.sh [--duration SECS] [--connections N] [--no-divan]
# Needs: wrk (Debian package `wrk`; installed with apt-get when missing and run as root),
# openssl (test certificate). Every load run is bounded by --duration (default 10 s).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
duration=10
connections=16
divan=1
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --no-divan) divan=0; shift ;;
    *) echo "usage: $0 [--duration SECS] [--connections N] [--no-divan]" >&2; exit 2 ;;
  esac
done

log() { echo "bench-server: $*" >&2; }

if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing wrk"
    DEBIAN_FRONTEND=noninteractive apt-get install -y wrk >/dev/null
  fi
fi
command -v wrk >/dev/null || { log "wrk is not installed and cannot be installed; no load test run"; exit 1; }

target=${CARGO_TARGET_DIR:-$here/target}
log "building aip (release)"
(cd "$here" && cargo build --release --quiet)
aip=$target/release/aip

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# policy FILE PORT [TLS]
policy() {
  local file=$1 port=$2 tls=${3:-}
  {
    echo "apiVersion: aip.io/v1alpha2"
    echo "kind: AgentPolicy"
    echo "metadata:"
    echo "  name: bench-agent"
    echo "spec:"
    echo "  allowed_tools: [read_file, list_directory, search_files]"
    echo "  tool_rules:"
    echo "    - tool: read_file"
    echo "      allow_args:"
    echo "        path: \"^/srv/data/.*\""
    echo "  protected_paths: [\"~/.ssh\", \"/etc/shadow\"]"
    echo "  server:"
    echo "    enabled: true"
    echo "    listen: \"127.0.0.1:$port\""
    if [ -n "$tls" ]; then
      echo "    tls:"
      echo "      cert: $work/cert.pem"
      echo "      key: $work/key.pem"
    fi
  } > "$file"
}

wait_health() {
  local url=$1
  for _ in $(seq 100); do
    if curl -skf "$url/health" >/dev/null 2>&1; then return 0; fi
    sleep 0.05
  done
  log "server did not become healthy at $url"; return 1
}

cat > "$work/allow.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"tool":"read_file","arguments":{"path":"/srv/data/report.txt"}}'
EOF
cat > "$work/block.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"tool":"read_file","arguments":{"path":"/srv/data/../../etc/shadow"}}'
EOF

# run NAME URL SCRIPT
run() {
  local name=$1 url=$2 script=$3
  log "$name: wrk -t1 -c$connections -d${duration}s"
  local out
  out=$(wrk -t1 -c"$connections" -d"${duration}s" --latency -s "$script" "$url/v1/validate")
  local rps p50 p90 p99 non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p90=$(awk '$1=="90%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  printf '%-34s %10s req/s   p50 %-9s p90 %-9s p99 %-9s non-2xx %s\n' "$name" "$rps" "$p50" "$p90" "$p99" "${non2xx:-0}"
}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost \
  -keyout "$work/key.pem" -out "$work/cert.pem" >/dev/null 2>&1

echo "== /v1/validate under load ($(nproc) CPUs, wrk 1 thread, $connections connections, ${duration}s per run) =="

port=$(free_port)
policy "$work/plain.yaml" "$port"
"$aip" server --policy "$work/plain.yaml" 2>"$work/plain.log" & pids+=($!)
wait_health "http://127.0.0.1:$port"
run "http  allow (regex + paths)" "http://127.0.0.1:$port" "$work/allow.lua"
run "http  block (protected path)" "http://127.0.0.1:$port" "$work/block.lua"

port=$(free_port)
policy "$work/tls.yaml" "$port" tls
"$aip" server --policy "$work/tls.yaml" 2>"$work/tls.log" & pids+=($!)
wait_health "https://127.0.0.1:$port"
run "https allow (TLS 1.3, keep-alive)" "https://127.0.0.1:$port" "$work/allow.lua"


metrics=$(curl -sf "http://127.0.0.1:$(awk -F'"' '/listen/ {split($2,a,":"); print a[2]}' "$work/plain.yaml")/metrics" || true)
echo
echo "server-side histogram (plaintext server, all runs):"
grep -E '^aip_request_duration_seconds_(count|sum)\{endpoint="validate"\}' <<<"$metrics" || true

if [ "$divan" = 1 ]; then
  echo
  echo "== identity operations (cargo bench --bench identity) =="
  (cd "$here" && cargo bench --quiet --bench identity 2>/dev/null)
fi
