#!/usr/bin/env bash
# Build a Debian bookworm root file system with systemd and the appliance's run-time packages, for the
# provisioning tests (a chroot) and as the base of the virtual Pi image.
#
#   hw-tests/build-rootfs.sh ARCH DEST
#
# ARCH is amd64 or arm64 (two-stage debootstrap under qemu-user-static). DEST is created next to a
# DEST.stamp holding the inputs' hash; when the stamp matches, nothing is done. Needs root and network
# access to the Debian mirror (this is a build step, like `make deps`; the tests themselves stay offline).
set -euo pipefail

arch=${1:?usage: build-rootfs.sh amd64|arm64 DEST}
dest=${2:?usage: build-rootfs.sh amd64|arm64 DEST}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

# Packages every test root has: systemd (systemctl, systemd-analyze) plus what install.sh installs.
base_packages="systemd,systemd-sysv,dbus,udev,kmod,procps,iproute2,curl,$(
    grep -v '^\s*#' "$repo/provisioning/apt-packages.txt" | grep -v '^\s*$' | paste -sd, -)"

inputs_hash=$( { echo "$arch $mirror $base_packages"; cat "$0"; } | sha256sum | cut -c1-16)
if [ -f "$dest.stamp" ] && [ "$(cat "$dest.stamp")" = "$inputs_hash" ] && [ -d "$dest" ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "build-rootfs: needs root (debootstrap, chroot)" >&2
    exit 1
fi

packages=(debootstrap)
if [ "$arch" != "$(dpkg --print-architecture)" ]; then
    packages+=(qemu-user-static binfmt-support)
fi
"$repo/provisioning/ensure-packages.sh" "${packages[@]}"
if [ "$arch" != "$(dpkg --print-architecture)" ] && [ -z "$(ls -A /proc/sys/fs/binfmt_misc 2>/dev/null)" ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --enable >/dev/null 2>&1 || true
fi

started=$(date +%s)
rm -rf "$dest" "$dest.stamp" "$dest.tmp"
mkdir -p "$(dirname "$dest")"
echo "build-rootfs: debootstrap bookworm/$arch into $dest (a few minutes)" >&2
debootstrap --foreign --arch="$arch" --variant=minbase --include="$base_packages" \
    bookworm "$dest.tmp" "$mirror" >"$dest.log" 2>&1 || { tail -20 "$dest.log" >&2; exit 1; }
chroot "$dest.tmp" /debootstrap/debootstrap --second-stage >>"$dest.log" 2>&1 \
    || { tail -20 "$dest.log" >&2; tail -20 "$dest.tmp/debootstrap/debootstrap.log" >&2 || true; exit 1; }
cat >"$dest.tmp/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
SOURCES
rm -rf "$dest.tmp/var/cache/apt/archives/"*.deb "$dest.tmp/var/lib/apt/lists/"*_Packages
echo "appliance-test" >"$dest.tmp/etc/hostname"
mv "$dest.tmp" "$dest"
echo "$inputs_hash" >"$dest.stamp"
echo "build-rootfs: done in $(( $(date +%s) - started )) s" >&2
