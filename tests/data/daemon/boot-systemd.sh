#!/bin/bash
# Boots systemd as PID 1 inside bubblewrap, isolated from the host (ecosystem.md §5.2): the
# host is read-only, /tmp /run /var /dev are private, /proc/sys is read-only, and systemd gets
# its own cgroup2 subtree CGROUP. TREE holds units/, journald.conf.d/ and root/usr/local (the
# installed aip), and is visible as /opt/aip.
#   boot-systemd.sh TREE CGROUP
set -eu
tree=$1 cg=$2
mkdir -p "$cg"
echo $$ > "$cg/cgroup.procs"
exec bwrap --die-with-parent --unshare-pid --unshare-net --unshare-uts --unshare-ipc --unshare-cgroup --as-pid-1 \
  --cap-add ALL --cap-drop CAP_SYS_MODULE --cap-drop CAP_SYS_TIME --cap-drop CAP_SYS_RAWIO --cap-drop CAP_SYSLOG \
  --ro-bind / / --dev /dev --proc /proc \
  --tmpfs /run --tmpfs /tmp --tmpfs /var \
  --bind "$cg" /sys/fs/cgroup \
  --ro-bind "$tree/units" /run/systemd/system \
  --ro-bind "$tree/journald.conf.d" /run/systemd/journald.conf.d \
  --ro-bind "$tree/root/usr/local" /usr/local \
  --tmpfs /opt --ro-bind "$tree" /opt/aip \
  --setenv container bwrap \
  /lib/systemd/systemd --system --unit=aip-test.target --log-target=console --show-status=no
