#!/usr/bin/env bash
# Install the Debian packages given as arguments when any is missing. Idempotent: prints nothing and
# changes nothing when all are present. Used by the Makefile and by install.sh.
set -euo pipefail

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "ensure-packages: not a Debian system; install these yourself: $*" >&2
    exit 0
fi

missing=()
for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
echo "ensure-packages: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# An old package list can name versions the mirror no longer has: refresh once and try again.
if ! $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"; then
    $sudo apt-get update -q
    $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
