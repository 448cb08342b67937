#!/usr/bin/env bash
# Builds and installs aip with aipd's systemd units and an example /etc/aip.
#
#   scripts/install.sh [--prefix /usr/local] [--destdir DIR] [--binary PATH] [--no-config]
#
#   --prefix   where bin/aip, lib/systemd/system, lib/sysusers.d and share/doc/aip go
#              (default /usr/local; the units' ExecStart follows it)
#   --destdir  stage everything under DIR (packaging, tests); DESTDIR is honoured too. Nothing is
#              started, and systemctl/systemd-sysusers are not run.
#   --binary   install this aip binary instead of building one (cargo build --release)
#   --no-config  do not install the example /etc/aip tree
#
# Existing configuration files are never overwritten. Without --destdir, as root, the script
# reloads systemd, creates the aip-users group, and says how to enable the socket.
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/usr/local
destdir=${DESTDIR:-}
binary=
config=1
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#*=}; shift ;;
    --destdir) destdir=$2; shift 2 ;;
    --destdir=*) destdir=${1#*=}; shift ;;
    --binary) binary=$2; shift 2 ;;
    --binary=*) binary=${1#*=}; shift ;;
    --no-config) config=0; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$prefix" in /*) ;; *) echo "install.sh: --prefix must be absolute" >&2; exit 2 ;; esac

if [ -z "$binary" ]; then
  cargo build --release --locked --bin aip
  binary=${CARGO_TARGET_DIR:-target}/release/aip
fi
[ -x "$binary" ] || { echo "install.sh: $binary is not an executable" >&2; exit 1; }

umask 022
root=${destdir%/}
unitdir=$root$prefix/lib/systemd/system
install -d -m 0755 "$root$prefix/bin" "$unitdir" "$root$prefix/lib/sysusers.d" "$root$prefix/share/doc/aip"
install -m 0755 "$binary" "$root$prefix/bin/aip"
sed "s#^ExecStart=/usr/local/bin/aip #ExecStart=$prefix/bin/aip #" systemd/aipd.service > "$unitdir/aipd.service"
chmod 0644 "$unitdir/aipd.service"
install -m 0644 systemd/aipd.socket "$unitdir/aipd.socket"
install -m 0644 systemd/sysusers.d/aip.conf "$root$prefix/lib/sysusers.d/aip.conf"
install -m 0644 docs/daemon.md "$root$prefix/share/doc/aip/daemon.md"

# Configuration: owned by root, writable by root alone (aipd refuses anything else).
if [ "$config" = 1 ]; then
  etc=$root/etc/aip
  install -d -m 0755 "$etc" "$etc/servers.d" "$etc/policies"
  put() {  # source destination
    if [ -e "$2" ]; then
      echo "kept existing $2"
    else
      install -m 0644 "$1" "$2"
    fi
  }
  put systemd/etc/aip/aipd.yaml "$etc/aipd.yaml"
  for f in systemd/etc/aip/servers.d/*.yaml; do put "$f" "$etc/servers.d/$(basename "$f")"; done
  for f in policies/*.yaml; do put "$f" "$etc/policies/$(basename "$f")"; done
  if [ "$(id -u)" = 0 ]; then chown -R root:root "$etc"; fi
fi

echo "installed aip to $root$prefix/bin/aip, units to $unitdir"
if [ -z "$root" ] && [ "$(id -u)" = 0 ] && [ -d /run/systemd/system ]; then
  systemd-sysusers "$prefix/lib/sysusers.d/aip.conf" || true
  systemctl daemon-reload
  echo "next: edit /etc/aip (aip daemon --check), then: systemctl enable --now aipd.socket"
fi
