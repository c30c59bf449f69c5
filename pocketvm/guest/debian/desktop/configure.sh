# Run by finalize.sh (sh -e, in this directory) on a copy of the plain
# pocketvm Debian system: installs the desktop packages and the files that
# start the desktop when the VM has a display.
#
# The packages come from debs/ on this disk, downloaded and checked against
# the signed Debian index by the host (apt in the guest, at emulated speed,
# spends minutes just reading the full index, and the user-mode network is
# not needed then). debs/Packages holds only their stanzas; apt in the
# guest resolves the dependencies against what the system already has, so
# packages the plain image holds are not installed again.
here=$(pwd)
lists=/run/pocketvm-desktop-apt
mkdir -p "$lists/lists/partial"
echo "deb [trusted=yes] file:$here/debs ./" > "$lists/sources.list"
set -- -o Dir::Etc::SourceList="$lists/sources.list" -o Dir::Etc::SourceParts=/nonexistent \
    -o Dir::State::Lists="$lists/lists" -o Acquire::Languages=none -o APT::Sandbox::User=root \
    -o Dpkg::Use-Pty=0 -o Dpkg::Options::=--force-unsafe-io -q
echo "pocketvm-desktop: $(date +%s) apt-get update"
apt-get "$@" update
echo "pocketvm-desktop: $(date +%s) apt-get install $(cat packages)"
# shellcheck disable=SC2046
apt-get "$@" install -y --no-install-recommends $(cat packages)
echo "pocketvm-desktop: $(date +%s) installed"
apt-get clean
rm -rf "$lists" /var/lib/apt/lists/*

# X.org on virtio-gpu's KMS (modesetting driver, no acceleration), jwm,
# and a terminal; started by systemd when /dev/dri/card0 exists.
install -D -m 0644 ./20-pocketvm.conf /etc/X11/xorg.conf.d/20-pocketvm.conf
install -D -m 0755 ./xsession /usr/local/lib/pocketvm/xsession
install -D -m 0644 ./jwmrc /usr/local/lib/pocketvm/jwmrc
cp ./pocketvm-desktop.service /etc/systemd/system/pocketvm-desktop.service
systemctl enable pocketvm-desktop.service >/dev/null 2>&1
