#!/bin/sh
# pocketvm image build, last step: runs inside a pocketvm VM as PID 1
# (root=/dev/vda init=/pocketvm/finalize.sh) with pocketvm's guest files on a
# second, read-only disk (/dev/vdb), and runs their configure.sh. Kept apart
# from the second stage so that new guest files need no new second stage.
. /pocketvm/common.sh

step configure
mkdir -p /run/pocketvm-files
mount -t ext4 -o ro /dev/vdb /run/pocketvm-files || finish 10
(cd /run/pocketvm-files && sh -e ./configure.sh) || finish 11
umount /run/pocketvm-files
finish 0
