# Sourced by the scripts pocketvm runs as PID 1 in a Debian tree during an
# image build: mounts what a system needs, and `finish N` reports N on the
# console ("pocketvm-build: exit N", read by the host) and powers off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run

finish() {
    echo "pocketvm-build: exit $1"
    sync
    # debootstrap --second-stage unmounts /proc when it exits (it mounts its
    # own over ours and unmounts it on exit): without this, the sysrq lines
    # below wrote plain files and the VM never powered off.
    mountpoint -q /proc || mount -t proc proc /proc
    # The kernel remounts every filesystem read-only and powers off.
    echo u > /proc/sysrq-trigger
    sleep 2
    echo o > /proc/sysrq-trigger
    while :; do sleep 3600; done
}

step() { echo "pocketvm-build: step $*"; }
