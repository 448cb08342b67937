#!/bin/bash
# Runs "$@" next to a real systemd-journald, inside the caller's private mount namespace
# (run as: unshare -m --propagation private journald-ns.sh OUT_JSON IDENTIFIER CMD...).
# Nothing touches the host: /run (and /var/log/journal, if present) are tmpfs here, and the
# journal is volatile. Afterwards every entry with SYSLOG_IDENTIFIER=IDENTIFIER is written to
# OUT_JSON as `journalctl -o json` lines.
set -euo pipefail
out=$1 ident=$2; shift 2
mount -t tmpfs tmpfs /run
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
mkdir -p /run/systemd/journal /run/systemd/journald.conf.d /run/log/journal
printf '[Journal]\nStorage=volatile\nReadKMsg=no\nRateLimitBurst=0\n' > /run/systemd/journald.conf.d/test.conf
/lib/systemd/systemd-journald & jpid=$!
for _ in $(seq 200); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
[ -S /run/systemd/journal/socket ] || { echo "journald did not start" >&2; exit 1; }
rc=0
"$@" || rc=$?
# journald handles datagrams asynchronously: wait until the count stops growing.
last=-1
for _ in $(seq 50); do
  n=$(journalctl --no-pager -o json --all "SYSLOG_IDENTIFIER=$ident" 2>/dev/null | wc -l)
  [ "$n" -eq "$last" ] && [ "$n" -gt 0 ] && break
  last=$n; sleep 0.1
done
journalctl --no-pager -o json --all "SYSLOG_IDENTIFIER=$ident" > "$out"
kill "$jpid"; wait "$jpid" || true
exit $rc
