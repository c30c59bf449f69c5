#!/bin/sh
# pocketvm image build, second stage. Runs inside a pocketvm VM as PID 1
# (kernel command line: root=/dev/vda init=/pocketvm/stage2.sh) on the tree
# that debootstrap's first stage unpacked on the host. It configures every
# package, applies the settings below, then powers the VM off. The host reads
# the result from the console: the last line is "pocketvm-stage2: exit N".
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run

finish() {
    echo "pocketvm-stage2: exit $1"
    sync
    mount -o remount,ro / 2>/dev/null
    sync
    echo o > /proc/sysrq-trigger
    while :; do sleep 3600; done
}

step() { echo "pocketvm-stage2: step $*"; }

step debootstrap
if [ -x /debootstrap/debootstrap ]; then
    /debootstrap/debootstrap --second-stage || {
        tail -n 30 /debootstrap/debootstrap.log 2>/dev/null
        finish 1
    }
fi

step configure
sh -e /pocketvm/configure.sh || finish 3

step done
finish 0
