#!/usr/bin/env bash
# Build the virtual Raspberry Pi: a Debian bookworm disk image that boots under QEMU with systemd, SSH
# (key only, reached through a port forward on 127.0.0.1), snd-aloop for audio and gpio-sim for GPIO.
#
#   hw-tests/build-image.sh ARCH OUTDIR        ARCH = amd64 (fast stand-in) or arm64 (the real thing)
#
# OUTDIR gets disk.img, vmlinuz, initrd.img, id_ed25519 (the test key) and image.stamp; nothing is done
# when the stamp matches the inputs. A build step with network access to the Debian mirror, like
# `make deps`; the tests that boot the image are offline.
set -euo pipefail
shopt -s inherit_errexit

arch=${1:?usage: build-image.sh amd64|arm64 OUTDIR}
out=${2:?usage: build-image.sh amd64|arm64 OUTDIR}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$out"
out=$(cd "$out" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

case "$arch" in
    amd64) kernel_flavour=amd64 ;;
    arm64) kernel_flavour=arm64 ;;
    *) echo "build-image: ARCH must be amd64 or arm64" >&2; exit 2 ;;
esac

# What the guest needs beyond the appliance's own packages: kernel, SSH, a compiler for gpio-sim.
vm_packages=("linux-image-$kernel_flavour" "linux-headers-$kernel_flavour" openssh-server
             gcc make xz-utils python3-venv sox e2fsprogs)

inputs_hash=$( { echo "$arch $mirror ${vm_packages[*]}"; cat "$0" "$here/build-rootfs.sh" \
    "$here/gpio-sim-setup.sh" "$repo/provisioning/apt-packages.txt"; } | sha256sum | cut -c1-16)
if [ -f "$out/image.stamp" ] && [ "$(cat "$out/image.stamp")" = "$inputs_hash" ]; then
    exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "build-image: needs root (chroot, mkfs)" >&2; exit 1; }
qemu_package=qemu-system-x86
[ "$arch" = arm64 ] && qemu_package=qemu-system-arm
"$repo/provisioning/ensure-packages.sh" e2fsprogs qemu-utils openssh-client zstd "$qemu_package"

started=$(date +%s)
base=${BASE_ROOTFS:-$repo/.cache/rootfs/bookworm-$arch}
"$here/build-rootfs.sh" "$arch" "$base"

root="$out/rootfs"
stage1="$out/stage1"
stage1_hash=$( { cat "$base.stamp"; echo "${vm_packages[*]}"; } | sha256sum | cut -c1-16)
rm -rf "$root" "$out/image.stamp"
if [ -f "$stage1.stamp" ] && [ "$(cat "$stage1.stamp")" = "$stage1_hash" ]; then
    cp -a "$stage1" "$root"
    fresh_stage1=no
else
    rm -rf "$stage1" "$stage1.stamp"
    cp -a "$base" "$root"
    fresh_stage1=yes
fi

in_root() {
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive "$@"
}
cleanup() {
    for mnt in dev/pts dev proc sys; do
        mountpoint -q "$root/$mnt" && umount -l "$root/$mnt"
    done
    return 0
}
trap cleanup EXIT
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
cp /etc/resolv.conf "$root/etc/resolv.conf"

cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
SOURCES
if [ "$fresh_stage1" = yes ]; then
    echo "build-image: installing kernel, SSH and build tools in the guest" >&2
    in_root apt-get update -q >"$out/build.log" 2>&1
    in_root apt-get install -y -q --no-install-recommends "${vm_packages[@]}" >>"$out/build.log" 2>&1 \
        || { tail -20 "$out/build.log" >&2; exit 1; }
    # Kept (outside the image) so changing a later step does not reinstall the kernel.
    for mnt in dev/pts dev proc sys; do umount "$root/$mnt"; done
    cp -a "$root" "$stage1"
    echo "$stage1_hash" >"$stage1.stamp"
    mount -t proc proc "$root/proc"
    mount -t sysfs sysfs "$root/sys"
    mount --bind /dev "$root/dev"
    mount --bind /dev/pts "$root/dev/pts"
fi
kver=$(find "$root/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n1)

# gpio-sim, out of tree: Debian's kernel has neither CONFIG_GPIO_SIM nor CONFIG_IRQ_SIM, so the module is
# built from the linux-source package of the kernel's own version with the interrupt simulator linked in.
echo "build-image: building gpio-sim for $kver" >&2
# shellcheck disable=SC2016 # ${Version} is dpkg-query's, not the shell's
src_version=$(in_root dpkg-query -W -f='${Version}' "linux-image-$kver")
source_deb=$(find "$out" -maxdepth 1 -name "linux-source-6.1_${src_version}_all.deb" | head -n1)
if [ -z "$source_deb" ]; then
    in_root sh -c "cd /tmp && apt-get download -q linux-source-6.1=$src_version" >>"$out/build.log" 2>&1 \
        || { tail -5 "$out/build.log" >&2; exit 1; }
    mv "$root"/tmp/linux-source-6.1_*.deb "$out/"
    source_deb=$(find "$out" -maxdepth 1 -name "linux-source-6.1_*_all.deb" | head -n1)
fi
mod="$root/usr/src/gpio-sim"
mkdir -p "$mod"
dpkg-deb --fsys-tarfile "$source_deb" | tar -xO ./usr/src/linux-source-6.1.tar.xz \
    | tar -xJ -C "$mod" --strip-components=3 --wildcards \
        '*/drivers/gpio/gpio-sim.c' '*/drivers/gpio/gpiolib.h' '*/kernel/irq/irq_sim.c'
mv "$mod/gpio-sim.c" "$mod/gpio-sim-core.c"
# irq_sim.c calls irq_to_desc(), which 6.1 does not export to modules: ask the exported
# generic_handle_domain_irq_safe() (what later kernels do) to run the handler instead.
sed -i -e '/irqnum = irq_find_mapping(work_ctx->domain, offset);/d' \
    -e 's/handle_simple_irq(irq_to_desc(irqnum));/generic_handle_domain_irq_safe(work_ctx->domain, offset);/' \
    "$mod/irq_sim.c"
if grep -q 'irq_to_desc' "$mod/irq_sim.c" "$mod/gpio-sim-core.c"; then
    echo "build-image: the irq_to_desc patch no longer fits this source; look at $mod" >&2
    exit 1
fi
printf 'obj-m := gpio-sim.o\ngpio-sim-y := gpio-sim-core.o irq_sim.o\n' >"$mod/Makefile"
in_root make -C "/lib/modules/$kver/build" M=/usr/src/gpio-sim modules >"$out/gpio-sim-build.log" 2>&1 \
    || { tail -30 "$out/gpio-sim-build.log" >&2; exit 1; }
if grep -q 'undefined!' "$out/gpio-sim-build.log"; then
    grep 'undefined!' "$out/gpio-sim-build.log" >&2
    echo "build-image: gpio-sim needs kernel symbols that are not exported" >&2
    exit 1
fi
mkdir -p "$root/lib/modules/$kver/extra"
cp "$root/usr/src/gpio-sim/gpio-sim.ko" "$root/lib/modules/$kver/extra/"
in_root depmod "$kver"
install -m 0755 "$here/gpio-sim-setup.sh" "$root/usr/local/sbin/gpio-sim-setup"
cat >"$root/etc/systemd/system/gpio-sim.service" <<'UNIT'
[Unit]
Description=Simulated GPIO chip (the virtual Pi's header)
Before=appliance.service
After=sys-kernel-config.mount systemd-udevd.service
Requires=sys-kernel-config.mount

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/gpio-sim-setup

[Install]
WantedBy=multi-user.target
UNIT
in_root systemctl enable gpio-sim.service >>"$out/build.log" 2>&1
# A Pi's firmware tells software which board it is (gpiozero reads "Revision" from /proc/cpuinfo); the
# virtual Pi says it is a Pi 4 B, to the appliance's service only.
mkdir -p "$root/etc/virtual-pi" "$root/etc/systemd/system/appliance.service.d"
printf 'processor\t: 0\nHardware\t: BCM2835\nRevision\t: c03114\nModel\t: Raspberry Pi 4 Model B Rev 1.4 (virtual)\n' \
    >"$root/etc/virtual-pi/cpuinfo"
cat >"$root/etc/systemd/system/appliance.service.d/virtual-pi.conf" <<'DROPIN'
[Service]
BindReadOnlyPaths=/etc/virtual-pi/cpuinfo:/proc/cpuinfo
DROPIN

# Boot fast under emulation: no timers, no periodic jobs, no waiting for a network that is not needed.
in_root systemctl mask apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer \
    e2scrub_reap.service fstrim.timer systemd-timesyncd.service dpkg-db-backup.timer \
    systemd-networkd-wait-online.service >>"$out/build.log" 2>&1 || true
in_root systemctl enable systemd-networkd.service ssh.service >>"$out/build.log" 2>&1
cat >"$root/etc/systemd/network/10-wired.network" <<'NET'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
NET
echo "/dev/vda / ext4 rw,relatime 0 1" >"$root/etc/fstab"
echo "vpi" >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 vpi\n' >"$root/etc/hosts"

# SSH: root with the test key only.
rm -f "$out/id_ed25519" "$out/id_ed25519.pub"
ssh-keygen -q -t ed25519 -N '' -C appliance-hw-test -f "$out/id_ed25519"
install -d -m 0700 "$root/root/.ssh"
install -m 0600 "$out/id_ed25519.pub" "$root/root/.ssh/authorized_keys"
cat >"$root/etc/ssh/sshd_config.d/appliance-test.conf" <<'SSHD'
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
SSHD
in_root ssh-keygen -A >>"$out/build.log" 2>&1

# Smaller and faster: no compiler caches, docs or apt lists in the image.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/*
cp "$root/boot/vmlinuz-$kver" "$out/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$out/initrd.img"
cleanup
trap - EXIT

echo "build-image: writing the disk image" >&2
rm -f "$out/disk.img"
mkfs.ext4 -q -F -L vpi -d "$root" "$out/disk.img" 4G
rm -rf "$root"
echo "$kver" >"$out/kernel-version"
echo "$inputs_hash" >"$out/image.stamp"
echo "build-image: $arch image ready in $(( $(date +%s) - started )) s" >&2
