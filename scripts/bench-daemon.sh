#!/usr/bin/env bash
# aipd benchmark (measures; asserts nothing). Needs root (per-session uids).
#
#   scripts/bench-daemon.sh [AIP_BINARY] [MOCK_SERVER]
#
# Session start latency = from spawning `aip connect mock` to the `initialize` reply on its
# stdout: the shim's start, the hello, the checks, a fresh sandbox (namespaces, mounts,
# Landlock, seccomp, per-session uid), the mock server's start and one proxied round trip.
#  * burst N: N clients start at the same moment; each one's latency counts (p50, p99).
#  * loaded N: N idle sessions stay open while 100 more start one after another.
# Memory: aipd's RSS with N idle sessions against none ((RSS_N - RSS_0) / N), and the
# proportional share of aipd's spawn server and the reapers it forked (each sandbox's pid 1).
# Each scenario gets a fresh aipd. BENCH_SIZES (default "1 50 200") and BENCH_MAX (default 500,
# the held-open test) tune it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-daemon.sh: run as root (aipd gives each session its own uid)" >&2; exit 1; }
aip=${1:-}
mock=${2:-}
target=${CARGO_TARGET_DIR:-target}
if [ -z "$aip" ]; then cargo build --release --quiet --bin aip; aip=$target/release/aip; fi
if [ -z "$mock" ]; then cargo build --release --quiet --example mock_mcp_server; mock=$target/release/examples/mock_mcp_server; fi
aip=$(readlink -f "$aip"); mock=$(readlink -f "$mock")
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d /tmp/aip-bench-daemon.XXXXXX)
chmod 755 "$work"
mkdir -p "$work/etc/servers.d"
chmod 755 "$work/etc" "$work/etc/servers.d"
cat > "$work/etc/aipd.yaml" <<EOF
socket:
  path: $work/aipd.sock
control:
  path: $work/control.sock
session_users:
  first: 1950000000
  count: 4000
limits:
  max_sessions: 2000
  max_sessions_per_user: 2000
audit:
  journald: false
  jsonl: $work/audit.jsonl
prewarm_netns: 16
EOF
cat > "$work/etc/servers.d/mock.yaml" <<EOF
command: $mock
allow:
  users: [root]
policy:
  apiVersion: aip.io/v1alpha1
  kind: AgentPolicy
  metadata:
    name: bench
  spec:
    mode: enforce
    allowed_tools: [echo]
EOF
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

echo "aip: $aip"
echo "host: $(nproc) CPUs, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$aip" "$work" "${BENCH_SIZES:-1 50 200}" "${BENCH_MAX:-500}" <<'PY'
import os, subprocess, sys, threading, time

aip, work, sizes, held_max = sys.argv[1], sys.argv[2], [int(x) for x in sys.argv[3].split()], int(sys.argv[4])
sock = f"{work}/aipd.sock"
INIT = b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}\n'

class Daemon:
    """A fresh aipd per scenario, so one scenario's memory does not slow the next."""
    def __enter__(self):
        for f in ("aipd.sock", "control.sock"):
            try: os.unlink(f"{work}/{f}")
            except FileNotFoundError: pass
        self.p = subprocess.Popen([aip, "daemon", "--config", f"{work}/etc/aipd.yaml"],
                                  stderr=open(f"{work}/daemon.log", "a"))
        for _ in range(200):
            if os.path.exists(sock): break
            time.sleep(0.02)
        close([start()[0] for _ in range(5)])  # warm up: page cache, namespace pool
        time.sleep(0.5)
        return self
    def __exit__(self, *a):
        self.p.terminate(); self.p.wait()

def start():
    t0 = time.perf_counter()
    p = subprocess.Popen([aip, "connect", "mock", "--socket", sock], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=False)
    p.stdin.write(INIT); p.stdin.flush()
    line = p.stdout.readline()
    dt = (time.perf_counter() - t0) * 1000
    if b'"result"' not in line:
        raise SystemExit(f"session failed: {line[:300]!r}")
    return p, dt

def close(ps):
    for p in ps:
        p.stdin.close()
    for p in ps:
        p.wait()

def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]

def row(name, lat):
    print(f"{name:<30} n={len(lat):<4} p50={pct(lat,50):8.2f} ms  p99={pct(lat,99):8.2f} ms  max={max(lat):8.2f} ms", flush=True)

def burst(n):
    out, procs, lock = [], [], threading.Lock()
    barrier = threading.Barrier(n)
    def one():
        barrier.wait()
        p, dt = start()
        with lock:
            out.append(dt); procs.append(p)
    ts = [threading.Thread(target=one) for _ in range(n)]
    [t.start() for t in ts]; [t.join() for t in ts]
    close(procs)
    return out

def status(pid, key):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith(key + ":"):
            return int(l.split()[1])

def mem_available():
    for l in open("/proc/meminfo"):
        if l.startswith("MemAvailable:"):
            return int(l.split()[1])

def reapers_pss_kb(pid):
    """PSS of aipd's spawn server and its children (each sandbox's pid 1, the reaper)."""
    parents, pss = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open(f"/proc/{d}/stat").read()
            parents[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
            for l in open(f"/proc/{d}/smaps_rollup"):
                if l.startswith("Pss:"):
                    pss[int(d)] = int(l.split()[1])
        except (OSError, ValueError, IndexError):
            pass
    spawners = {p for p, pp in parents.items() if pp == pid}
    return sum(v for p, v in pss.items() if p in spawners or parents.get(p) in spawners)

print("\n-- session start latency through aip connect (spawn -> initialize reply), fresh aipd each")
for n in sizes:
    with Daemon():
        lat = []
        for _ in range(max(1, 200 // n)):
            lat += burst(n)
            time.sleep(0.5)
        row(f"burst: {n} start at once", lat)
for n in sizes:
    with Daemon():
        held = [start()[0] for _ in range(n)]
        time.sleep(0.5)
        lat = []
        for _ in range(100):
            p, dt = start(); lat.append(dt); close([p])
            time.sleep(0.02)
        row(f"one at a time, {n} open", lat)
        close(held)

print("\n-- memory (sessions opened one after another, then held)")
with Daemon() as d:
    time.sleep(1.5)
    base, avail0 = status(d.p.pid, "VmRSS"), mem_available()
    print(f"aipd RSS with no session: {base/1024:.1f} MiB")
    held = []
    for n in sorted(set(sizes + [held_max])):
        t0, before = time.perf_counter(), len(held)
        try:
            while len(held) < n:
                held.append(start()[0])
        except (OSError, SystemExit) as e:
            print(f"stopped at {len(held)} sessions: {e}")
            break
        took = time.perf_counter() - t0
        time.sleep(1.5)
        rss, threads = status(d.p.pid, "VmRSS"), status(d.p.pid, "Threads")
        pss = reapers_pss_kb(d.p.pid)
        used = avail0 - mem_available()
        print(f"{n:4d} open: aipd RSS {rss/1024:6.1f} MiB (+{(rss-base)/n:4.0f} KiB/session, {threads} threads); "
              f"spawn server + reapers' PSS {pss/n:5.0f} KiB/session; whole system {used/n/1024:5.1f} MiB/session "
              f"(servers included); {n - before} more started in {took:.1f} s; "
              f"load {open('/proc/loadavg').read().split()[0]}", flush=True)
    close(held)
    time.sleep(2)
    print(f"aipd RSS after all sessions ended: {status(d.p.pid, 'VmRSS')/1024:.1f} MiB")
PY
