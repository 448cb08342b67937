#!/usr/bin/env bash
# Sandbox setup overhead: spawn-to-exec of /bin/true with every layer on, against bare exec and
# against bubblewrap, in the same run. Prints p50/p99 per command and the overheads.
#
#   scripts/bench-sandbox.sh            # builds aip in release mode first
#   AIP_BIN=path/to/aip RUNS=500 scripts/bench-sandbox.sh
#
# Installs bubblewrap and hyperfine from Debian packages when they are missing (needs root and
# apt-get). Measures only: it asserts nothing. Run it on a quiet machine; on a shared one the
# absolute numbers move with the load, the ratios much less.
set -euo pipefail

RUNS="${RUNS:-300}"
WARMUP="${WARMUP:-20}"
cd "$(dirname "$0")/.."

need=()
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v hyperfine >/dev/null || need+=(hyperfine)
command -v python3 >/dev/null || need+=(python3)
if ((${#need[@]})); then
    echo "installing ${need[*]} (Debian packages)" >&2
    apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || {
        apt-get update -q >/dev/null && apt-get install -y -q "${need[@]}" >/dev/null
    }
fi

if [[ -z "${AIP_BIN:-}" ]]; then
    cargo build --release --quiet
    AIP_BIN="${CARGO_TARGET_DIR:-target}/release/aip"
fi
AIP_BIN="$(readlink -f "$AIP_BIN")"
TRUE="$(readlink -f /bin/true)"

# bubblewrap with the closest equivalent layers it has: every namespace, a read-only /usr, fresh
# /proc and /dev, private /tmp, new session, die with parent (no Landlock, no seccomp, no
# capability or uid changes: bwrap applies none of those by default).
BWRAP="bwrap --unshare-all --die-with-parent --new-session --ro-bind /usr /usr"
for link in bin lib lib64 sbin; do
    [[ -L "/$link" ]] && BWRAP+=" --symlink $(readlink "/$link") /$link"
done
BWRAP+=" --proc /proc --dev /dev --tmpfs /tmp $TRUE"

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# The host changes between sessions of the build VM and moves every absolute number (2-3x):
# name it, so runs can be compared with the runs of the same host.
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
echo "kernel $(uname -r), $(nproc) CPUs ($cpu), load $(cut -d' ' -f1-3 /proc/loadavg); $RUNS runs each" >&2
hyperfine -N --style none --warmup "$WARMUP" --runs "$RUNS" --export-json "$out/h.json" \
    -n bare "$TRUE" \
    -n aip "$AIP_BIN sandbox -- $TRUE" \
    -n bwrap "$BWRAP" >/dev/null

# What aipd pays per session: spawned through a spawn server as aipd does, no process start-up.
# After a pause: the kernel tears the ~600 network namespaces of the runs above down in its own
# workers after they exit, and measured during that the p50 read ~0.5 ms and the p99 ~3 ms higher.
sleep "${SETTLE:-15}"
"$AIP_BIN" sandbox --timing "$RUNS" -- "$TRUE" >"$out/timing.txt"

python3 - "$out/h.json" "$out/timing.txt" <<'EOF'
import json, sys

def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, round((len(v) - 1) * p))] * 1000

results = {r["command"]: r["times"] for r in json.load(open(sys.argv[1]))["results"]}
bare = results["bare"]
rows = []
for name in ("bare", "aip", "bwrap"):
    t = results[name]
    rows.append((name, pct(t, .5), pct(t, .99), sum(t) / len(t) * 1000))
print(f"{'command':<34} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'overhead p50':>13} {'overhead p99':>13}")
for name, p50, p99, mean in rows:
    label = {"bare": "/bin/true", "aip": "aip sandbox -- /bin/true", "bwrap": "bwrap (namespaces only)"}[name]
    o50 = p50 - rows[0][1]
    o99 = p99 - rows[0][2]
    print(f"{label:<34} {p50:8.2f} {p99:8.2f} {mean:8.2f} {o50:13.2f} {o99:13.2f}")
aip50 = rows[1][1] - rows[0][1]
bw50 = rows[2][1] - rows[0][1]
if bw50 > 0:
    print(f"aip overhead / bwrap overhead (p50): {aip50 / bw50:.2f}")
print()
timing = open(sys.argv[2]).read().strip()
print("spawn as aipd pays it (aip sandbox --timing: through a spawn server, no process start-up):")
print(timing)
import re
m = re.search(r"setup \(spawn to exec\): p50 ([0-9.]+) ms", timing)
if m and bw50 > 0:
    print(f"aipd's spawn-to-exec p50 / bwrap overhead p50: {float(m.group(1)) / bw50:.2f}")
EOF
