# Run by finalize.sh (sh -e, in this directory) on a Debian system whose
# packages are configured: the settings that make it a pocketvm guest.
# Each step says why. Must be repeatable: it also runs on an image that has
# an older version of these files.

# Root logs in on the serial console without a password prompt.
mkdir -p /etc/systemd/system/serial-getty@ttyS0.service.d
cp ./autologin.conf /etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf
passwd -d root >/dev/null

# DHCP on every wired interface, by systemd-networkd (part of systemd);
# the user-mode NAT's DNS relay is the resolver.
mkdir -p /etc/systemd/network
cp ./20-pocketvm.network /etc/systemd/network/20-pocketvm.network
systemctl enable systemd-networkd.service >/dev/null 2>&1
# Do not hold the boot until the network is up: a VM without a NIC must not wait.
systemctl disable systemd-networkd-wait-online.service >/dev/null 2>&1 || true
systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1 || true
printf 'nameserver 10.0.2.3\n' > /etc/resolv.conf

# Timers that would start apt or disk scans at random moments in a sandbox.
for t in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer fstrim.timer; do
    systemctl disable "$t" >/dev/null 2>&1 || true
done

# A fresh identity after every snapshot restore (see pocketvm-newid).
install -m 0755 ./pocketvm-newid /usr/local/sbin/pocketvm-newid
rm -f /usr/local/sbin/pocketvm-newid-watch
cp ./pocketvm-newid.service /etc/systemd/system/pocketvm-newid.service
rm -f /etc/udev/rules.d/90-pocketvm-vmgenid.rules
systemctl enable pocketvm-newid.service >/dev/null 2>&1

# /tmp (a tmpfs) with 2 MiB pages for large files: see tmp-huge.conf.
mkdir -p /etc/systemd/system/tmp.mount.d
cp ./tmp-huge.conf /etc/systemd/system/tmp.mount.d/huge.conf

echo pocket > /etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\tpocket\n::1\tlocalhost ip6-localhost ip6-loopback\n' > /etc/hosts
printf '/dev/vda\t/\text4\tdefaults,errors=remount-ro\t0\t0\n' > /etc/fstab
# systemd writes a machine-id at first boot (empty file = "not yet").
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id

# The guest agent (pocketvm/guest/agent.py): commands and files from the
# host over vsock, for `pocket exec`, `pocket cp` and the sandbox APIs.
if [ -f ./agent.py ]; then
    install -D -m 0644 ./agent.py /usr/local/lib/pocketvm/agent.py
    cp ./pocketvm-agent.service /etc/systemd/system/pocketvm-agent.service
    systemctl enable pocketvm-agent.service >/dev/null 2>&1
fi
