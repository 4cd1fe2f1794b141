#!/usr/bin/env bash
# Run a command as root inside a throw-away view of a Debian root file system:
#
#   tests/chroot_run.sh ROOTFS STATE SRC WHEELHOUSE -- COMMAND...
#
# ROOTFS stays untouched: an overlay puts every change into STATE/upper, which persists between calls
# (so a second install.sh sees the first one's work) and which a test can inspect to see exactly what
# changed. SRC (the checkout) is visible read-only at /src, WHEELHOUSE read-only at /wheelhouse. All
# mounts live in a private mount namespace and vanish with the command. No network is set up.
set -euo pipefail

rootfs=${1:?} state=${2:?} src=${3:?} wheelhouse=${4:?}
shift 4
[ "${1:-}" = -- ] && shift

if [ -z "${CHROOT_RUN_INNER:-}" ]; then
    mkdir -p "$state/upper" "$state/work" "$state/merged"
    CHROOT_RUN_INNER=1 exec unshare --mount --propagation private --fork \
        "$0" "$rootfs" "$state" "$src" "$wheelhouse" -- "$@"
fi

root=$state/merged
mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$state/upper,workdir=$state/work" "$root"
mount -t proc proc "$root/proc"
mount -t sysfs -o ro sysfs "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/tmp"
mount -t tmpfs tmpfs "$root/run"
mkdir -p "$root/src" "$root/wheelhouse"
mount --bind -o ro "$src" "$root/src"
mount --bind -o ro "$wheelhouse" "$root/wheelhouse"
# CHROOT_ENV: extra NAME=value words for the command's environment (split on spaces on purpose).
# shellcheck disable=SC2086
exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    ${CHROOT_ENV:-} "$@"
