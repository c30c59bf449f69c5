#!/bin/sh
# pocketvm image build, second stage: runs inside a pocketvm VM as PID 1
# (root=/dev/vda init=/pocketvm/stage2.sh) on the tree that debootstrap's
# first stage unpacked on the host, and configures every package.
. /pocketvm/common.sh

step debootstrap
/debootstrap/debootstrap --second-stage || {
    tail -n 30 /debootstrap/debootstrap.log 2>/dev/null
    finish 1
}
step clean
apt-get clean
rm -rf /var/lib/apt/lists/*
finish 0
