#!/usr/bin/env bash
# Turn a fresh Raspberry Pi OS Lite (bookworm) -- or any Debian bookworm -- into a talking robot.
#
#   sudo provisioning/install.sh [--preset NAME] [--sound-card ID]        install, or converge an install
#   sudo provisioning/install.sh --upgrade                                 new code, same config and state
#   sudo provisioning/install.sh --uninstall [--purge]                     remove (--purge: config, keys, state too)
#
# Idempotent: a second run changes nothing and says so. API keys come from $OPENAI_API_KEY /
# $ANTHROPIC_API_KEY, from --openai-key-file / --anthropic-key-file, or from a prompt on a terminal; they
# are written to root-only files under /etc/appliance/credentials and handed to the service by systemd
# (LoadCredential=), never printed, never put into appliance.toml. Run with --help for every option.
set -euo pipefail
shopt -s inherit_errexit
umask 022

readonly PREFIX=/opt/appliance
readonly ETC=/etc/appliance
readonly CREDS=$ETC/credentials
readonly STATE=/var/lib/appliance
readonly UNIT_DIR=/etc/systemd/system
readonly SERVICE=appliance.service
readonly SVC_USER=appliance
readonly ASOUND=/etc/asound.conf
readonly MODULES_FILE=/etc/modules-load.d/appliance.conf
readonly UDEV_RULES=/etc/udev/rules.d/60-appliance-devices.rules
readonly MANAGED="# Managed by appliance provisioning/install.sh; remove this line to keep your own edits."
# Every credential the app reads (appliance/config.py _PROVIDER_KEYS, the remote brain, the control API);
# each gets a root-only file, empty when unused, so the unit's LoadCredential= never fails on a missing one.
readonly KEY_NAMES=(openai_api_key anthropic_api_key gemini_api_key google_api_key azure_speech_key
    amivoice_api_key dify_api_key xai_api_key remote_api_key control_token mqtt_password)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
source_parts=(pyproject.toml appliance)
for part in README.md LICENSE; do
    [ -e "$repo/$part" ] && source_parts+=("$part")
done

mode=install
preset=""
sound_card=""
wheel=""
wheelhouse=""
start=yes
interactive=auto
purge=no
ready_timeout=${APPLIANCE_READY_TIMEOUT:-120}
declare -A key_files=()

changes=0
reboot_needed=no

log() { echo "install.sh: $*" >&2; }
die() { echo "install.sh: error: $*" >&2; exit 1; }
changed() {
    changes=$((changes + 1))
    log "changed: $*"
}

usage() {
    cat <<'USAGE'
Usage: sudo provisioning/install.sh [options]

  --preset NAME           hardware preset (default: usb, or the one installed before):
                            usb             USB microphone/speaker or the headphone jack
                            respeaker-2mic  Seeed ReSpeaker 2-Mics Pi HAT (WM8960; I2C, SPI LEDs)
                            voicehat        Google AIY Voice HAT v1
                            loopback        ALSA loopback (snd-aloop) for tests and virtual Pis
  --sound-card ID         ALSA card id for input and output (see /proc/asound/cards), overrides the preset
  --wheel FILE            install this appliance wheel instead of building one from this checkout
  --wheelhouse DIR        take every Python package from DIR only (offline install)
  --openai-key-file F     read the OpenAI API key from file F ("-" = standard input)
  --anthropic-key-file F  read the Anthropic API key from file F ("-" = standard input)
  --non-interactive       never prompt for API keys
  --no-start              enable the service but do not start it now (image building)
  --upgrade               replace the code, keep configuration and state; roll back if the new code
                          does not pass its checks or does not reach READY
  --uninstall             stop and remove the service, code, user and system files; keep config and state
  --purge                 with --uninstall: also remove /etc/appliance (config, keys) and /var/lib/appliance
  --print-packages        print the Debian packages the appliance needs and exit
USAGE
}

packages() {
    grep -v '^\s*#' "$here/apt-packages.txt" | grep -v '^\s*$'
}

while [ $# -gt 0 ]; do
    case "$1" in
        --preset) preset=${2:?--preset needs a name}; shift ;;
        --sound-card) sound_card=${2:?--sound-card needs an ALSA card id}; shift ;;
        --wheel) wheel=${2:?--wheel needs a file}; shift ;;
        --wheelhouse) wheelhouse=${2:?--wheelhouse needs a directory}; shift ;;
        --openai-key-file) key_files[openai_api_key]=${2:?--openai-key-file needs a file}; shift ;;
        --anthropic-key-file) key_files[anthropic_api_key]=${2:?--anthropic-key-file needs a file}; shift ;;
        --non-interactive) interactive=no ;;
        --no-start) start=no ;;
        --upgrade) mode=upgrade ;;
        --uninstall) mode=uninstall ;;
        --purge) purge=yes ;;
        --print-packages) packages; exit 0 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

if [ "$purge" = yes ] && [ "$mode" != uninstall ]; then
    die "--purge only goes with --uninstall"
fi
[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0 ...)"
[ -f /etc/debian_version ] || die "this installer needs Debian or Raspberry Pi OS (bookworm)"
if [ -n "$wheel" ]; then
    [ -f "$wheel" ] || die "--wheel: no such file: $wheel"
    wheel=$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")
fi
if [ -n "$wheelhouse" ]; then
    [ -d "$wheelhouse" ] || die "--wheelhouse: no such directory: $wheelhouse"
    wheelhouse=$(cd "$wheelhouse" && pwd)
fi

tmp=$(mktemp -d /tmp/appliance-install.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

systemd_running() { [ -d /run/systemd/system ]; }

# --- small idempotent primitives ------------------------------------------------------------------

# put_file SRC DEST MODE OWNER:GROUP -- install SRC as DEST unless it is already exactly that.
put_file() {
    local src=$1 dest=$2 mode=$3 owner=$4
    if [ -f "$dest" ] && cmp -s "$src" "$dest" \
        && [ "$(stat -c '%a %U:%G' "$dest")" = "${mode#0} $owner" ]; then
        return 1
    fi
    local staged
    staged=$(mktemp "$(dirname "$dest")/.$(basename "$dest").XXXXXX")
    cat "$src" >"$staged"
    chmod "$mode" "$staged"
    chown "$owner" "$staged"
    mv -f "$staged" "$dest"
    changed "$dest"
    return 0
}

# put_dir DIR MODE OWNER:GROUP
put_dir() {
    local dir=$1 mode=$2 owner=$3
    if [ ! -d "$dir" ]; then
        mkdir -p "$dir"
        chmod "$mode" "$dir"
        chown "$owner" "$dir"
        changed "$dir/"
    elif [ "$(stat -c '%a %U:%G' "$dir")" != "${mode#0} $owner" ]; then
        chmod "$mode" "$dir"
        chown "$owner" "$dir"
        changed "$dir/ (owner/mode)"
    fi
}

# A file we manage may be replaced; a file someone else wrote is left alone.
ours_or_absent() { [ ! -e "$1" ] || head -n1 "$1" | grep -qxF "$MANAGED"; }

# --- presets ----------------------------------------------------------------------------------------
# Sets: capture_pcm playback_pcm ctl_card needs_spi needs_i2c dtoverlay kernel_module

apply_preset() {
    capture_pcm="" playback_pcm="" ctl_card="" needs_spi=no needs_i2c=no dtoverlay="" kernel_module=""
    case "$1" in
        usb) ;;
        respeaker-2mic)
            # Seeed's overlay (from their seeed-voicecard package); its card id is seeed2micvoicec.
            ctl_card=seeed2micvoicec needs_i2c=yes needs_spi=yes dtoverlay=seeed-2mic-voicecard ;;
        voicehat)
            ctl_card=sndrpigooglevoi dtoverlay=googlevoicehat-soundcard ;;
        loopback)
            # Tests play into hw:Loopback,0,0 (heard on 1,0: the microphone) and record 1,1 (the speaker).
            capture_pcm="hw:Loopback,1,0" playback_pcm="hw:Loopback,0,1" ctl_card=Loopback
            kernel_module=snd-aloop ;;
        *) die "unknown preset '$1' (usb, respeaker-2mic, voicehat, loopback)" ;;
    esac
    if [ -n "$sound_card" ]; then
        ctl_card=$sound_card capture_pcm="" playback_pcm=""
    fi
    if [ -n "$ctl_card" ] && [ -z "$capture_pcm" ]; then
        capture_pcm="dsnoop:CARD=$ctl_card" playback_pcm="dmix:CARD=$ctl_card"
    fi
}

# --- install steps ----------------------------------------------------------------------------------

ensure_packages() {
    local missing=() pkg
    while read -r pkg; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done < <(packages)
    [ ${#missing[@]} -eq 0 ] && return
    "$here/ensure-packages.sh" "${missing[@]}"
    changed "packages: ${missing[*]}"
}

ensure_user() {
    local group
    for group in "$SVC_USER" audio gpio spi i2c; do
        if ! getent group "$group" >/dev/null; then
            groupadd --system "$group"
            changed "group $group"
        fi
    done
    if ! getent passwd "$SVC_USER" >/dev/null; then
        useradd --system --gid "$SVC_USER" --home-dir "$STATE" --no-create-home \
            --shell /usr/sbin/nologin --comment "talking robot appliance" "$SVC_USER"
        changed "user $SVC_USER"
    fi
}

ensure_dirs() {
    put_dir "$ETC" 0750 "root:$SVC_USER" || true
    put_dir "$CREDS" 0700 root:root || true
    put_dir "$STATE" 0750 "$SVC_USER:$SVC_USER" || true
    put_dir "$PREFIX" 0755 root:root || true
    put_dir "$PREFIX/releases" 0755 root:root || true
}

ensure_config() {
    if [ ! -e "$ETC/appliance.toml" ]; then
        put_file "$here/appliance.toml.example" "$ETC/appliance.toml" 0640 "root:$SVC_USER"
    elif [ "$(stat -c '%a %U:%G' "$ETC/appliance.toml")" != "640 root:$SVC_USER" ]; then
        chmod 0640 "$ETC/appliance.toml"
        chown "root:$SVC_USER" "$ETC/appliance.toml"
        changed "$ETC/appliance.toml (owner/mode)"
    fi
    echo "$preset" >"$tmp/preset"
    put_file "$tmp/preset" "$PREFIX/preset" 0644 root:root || true
}

# The key for credential $1 from a file option, the environment or a prompt; empty = keep what is there.
wanted_key() {
    local name=$1 env_name file
    env_name=$(echo "$name" | tr '[:lower:]' '[:upper:]')
    file=${key_files[$name]:-}
    if [ -n "$file" ]; then
        if [ "$file" = - ]; then
            head -n1
        else
            [ -r "$file" ] || die "cannot read the key file $file"
            head -n1 "$file"
        fi
    elif [ -n "${!env_name:-}" ]; then
        printf '%s\n' "${!env_name}"
    elif [ "$interactive" != no ] && [ -t 0 ] && [ ! -s "$CREDS/$name" ]; then
        local key=""
        read -r -s -p "install.sh: ${env_name} (Enter to skip): " key </dev/tty || true
        echo >&2
        printf '%s\n' "$key"
    fi
}

ensure_credentials() {
    local name key
    for name in "${KEY_NAMES[@]}"; do
        key=$(wanted_key "$name" | tr -d '\r' | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//')
        if [ -n "$key" ]; then
            (umask 077 && printf '%s\n' "$key" >"$tmp/$name")
        elif [ -f "$CREDS/$name" ]; then
            (umask 077 && cat "$CREDS/$name" >"$tmp/$name")
        else
            (umask 077 && : >"$tmp/$name")
        fi
        put_file "$tmp/$name" "$CREDS/$name" 0600 root:root || true
        rm -f "$tmp/$name"
    done
}

ensure_devices() {
    # Raspberry Pi OS gives the gpio/spi/i2c groups their devices (99-com.rules); plain Debian does not.
    if [ -e /usr/lib/udev/rules.d/99-com.rules ] || [ -e /etc/udev/rules.d/99-com.rules ]; then
        return
    fi
    cat >"$tmp/udev" <<RULES
$MANAGED
SUBSYSTEM=="gpio", KERNEL=="gpiochip*", GROUP="gpio", MODE="0660"
SUBSYSTEM=="spidev", GROUP="spi", MODE="0660"
SUBSYSTEM=="i2c-dev", GROUP="i2c", MODE="0660"
RULES
    if ours_or_absent "$UDEV_RULES" && put_file "$tmp/udev" "$UDEV_RULES" 0644 root:root; then
        if systemd_running; then
            udevadm control --reload || true
            udevadm trigger --subsystem-match=gpio --subsystem-match=spidev --subsystem-match=i2c-dev || true
        fi
    fi
}

ensure_alsa() {
    if [ -n "$kernel_module" ]; then
        printf '%s\n%s\n' "$MANAGED" "$kernel_module" >"$tmp/modules"
        put_file "$tmp/modules" "$MODULES_FILE" 0644 root:root || true
        if [ ! -d "/sys/module/${kernel_module//-/_}" ] && systemd_running; then
            modprobe "$kernel_module" || log "warning: could not load $kernel_module now; it loads at boot"
        fi
    elif ours_or_absent "$MODULES_FILE" && [ -e "$MODULES_FILE" ]; then
        rm -f "$MODULES_FILE"
        changed "removed $MODULES_FILE"
    fi
    [ -n "$ctl_card" ] || return 0
    cat >"$tmp/asound" <<ALSA
$MANAGED
# Preset: $preset. The appliance (and aplay/arecord) use ALSA's default device.
pcm.!default {
    type asym
    playback.pcm { type plug slave.pcm "$playback_pcm" }
    capture.pcm { type plug slave.pcm "$capture_pcm" }
}
ctl.!default {
    type hw
    card "$ctl_card"
}
ALSA
    if ! ours_or_absent "$ASOUND"; then
        log "warning: $ASOUND was written by someone else; leaving it alone (wanted card $ctl_card)"
        return
    fi
    put_file "$tmp/asound" "$ASOUND" 0644 root:root || true
}

boot_config() {
    local file
    for file in /boot/firmware/config.txt /boot/config.txt; do
        [ -f "$file" ] && { echo "$file"; return; }
    done
}

ensure_buses() {
    if ! command -v raspi-config >/dev/null 2>&1; then
        if [ "$needs_spi" = yes ] || [ "$needs_i2c" = yes ] || [ -n "$dtoverlay" ]; then
            log "not Raspberry Pi OS (no raspi-config): skipping SPI/I2C/overlay setup for preset $preset"
        fi
        return
    fi
    if [ "$needs_spi" = yes ] && [ "$(raspi-config nonint get_spi)" != 0 ]; then
        raspi-config nonint do_spi 0
        changed "SPI enabled"
        reboot_needed=yes
    fi
    if [ "$needs_i2c" = yes ] && [ "$(raspi-config nonint get_i2c)" != 0 ]; then
        raspi-config nonint do_i2c 0
        changed "I2C enabled"
        reboot_needed=yes
    fi
    local config
    config=$(boot_config)
    if [ -n "$dtoverlay" ] && [ -n "$config" ] && [ ! -e "$(dirname "$config")/overlays/$dtoverlay.dtbo" ]; then
        log "warning: the overlay $dtoverlay is not installed ($(dirname "$config")/overlays/); install the"
        log "         HAT maker's driver first (see the README's hardware presets), then run this again"
    elif [ -n "$dtoverlay" ] && [ -n "$config" ] && ! grep -qx "dtoverlay=$dtoverlay" "$config"; then
        printf '\n# added by appliance install.sh (preset %s)\ndtoverlay=%s\n' "$preset" "$dtoverlay" >>"$config"
        changed "$config: dtoverlay=$dtoverlay"
        reboot_needed=yes
    fi
}

ensure_units() {
    local unit units_changed=no
    for unit in appliance.service appliance-retry.timer; do
        if put_file "$repo/systemd/$unit" "$UNIT_DIR/$unit" 0644 root:root; then
            units_changed=yes
        fi
    done
    if [ "$units_changed" = yes ] && systemd_running; then
        systemctl daemon-reload
    fi
    if [ "$(systemctl is-enabled "$SERVICE" 2>/dev/null || true)" != enabled ]; then
        systemctl enable "$SERVICE" 2>&1 | sed 's/^/install.sh: /' >&2
        changed "enabled $SERVICE"
    fi
}

# --- the code: one venv per release, /opt/appliance/current points at the one in use ----------------

pip_source_args() {
    if [ -n "$wheelhouse" ]; then
        printf '%s\n' --no-index --find-links "$wheelhouse"
    fi
}

# What to install: the wheel given with --wheel, or a copy of this checkout's source (pip builds it in the
# release's own venv, so no second venv is needed just to build).
code_source() {
    if [ -n "$wheel" ]; then
        echo "${wheel}[pi]"
        return
    fi
    [ -f "$repo/pyproject.toml" ] || die "no wheel given (--wheel) and $repo is not a checkout of the appliance"
    if [ ! -d "$tmp/src" ]; then
        # A copy, so building never writes into the checkout (which may be read-only or someone else's).
        mkdir -p "$tmp/src"
        tar -C "$repo" --exclude=__pycache__ --exclude='*.pyc' -cf - "${source_parts[@]}" | tar -C "$tmp/src" -xf -
    fi
    echo "$tmp/src[pi]"
}

# A release is named by version and a hash of its contents: for a wheel, its RECORD (the hashes of every
# file in it, the same however often the wheel is rebuilt); for a checkout, every file that goes into the
# wheel. The pinned versions count too. The same code under the same pins is the same release.
release_id() {
    if [ -n "$wheel" ]; then
        python3 - "$wheel" "$here/constraints.txt" <<'PY'
import hashlib, sys, zipfile
wheel, constraints = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as zf:
    record = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
    digest = hashlib.sha256(zf.read(record))
version = record.split("/")[0].removesuffix(".dist-info").split("-")[1]
with open(constraints, "rb") as fh:
    digest.update(fh.read())
print(f"{version}-{digest.hexdigest()[:12]}")
PY
        return
    fi
    local version digest
    version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/appliance/__init__.py")
    [ -n "$version" ] || die "cannot read __version__ from $repo/appliance/__init__.py"
    digest=$(cd "$repo" && { find "${source_parts[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' \
        | LC_ALL=C sort | xargs -d '\n' sha256sum; sha256sum provisioning/constraints.txt; } | sha256sum | cut -c1-12)
    echo "$version-$digest"
}

current_release() {
    if [ -L "$PREFIX/current" ]; then
        basename "$(readlink "$PREFIX/current")"
    fi
}

release_complete() { [ -f "$PREFIX/releases/$1/.complete" ]; }

build_release() {
    local source=$1 id=$2 dir="$PREFIX/releases/$2" args
    mapfile -t args < <(pip_source_args)
    rm -rf "$dir"
    log "creating $dir (Python packages: ${wheelhouse:-from the package index})"
    # System site packages: Debian's python3-systemd (and on a Pi, python3-lgpio) without a compiler.
    python3 -m venv --system-site-packages "$dir"
    if ! "$dir/bin/pip" install --quiet --disable-pip-version-check "${args[@]}" \
        --constraint "$here/constraints.txt" "$source" >&2; then
        rm -rf "$dir"
        return 1
    fi
    cp "$repo/README.md" "$dir/README.md" 2>/dev/null || true
    touch "$dir/.complete"
    changed "release $id"
}

# The new code must at least start and accept the existing configuration.
check_release() {
    local dir=$1
    if ! "$dir/bin/appliance" --version >&2; then
        log "the new code does not start"
        return 1
    fi
    if ! CREDENTIALS_DIRECTORY=$CREDS "$dir/bin/appliance" --config "$ETC/appliance.toml" check-config >&2; then
        log "the new code rejects $ETC/appliance.toml"
        return 1
    fi
}

point_current_at() {
    ln -sfn "releases/$1" "$PREFIX/current.new"
    mv -T "$PREFIX/current.new" "$PREFIX/current"
    changed "$PREFIX/current -> releases/$1"
}

prune_releases() {
    local keep_a=$1 keep_b=${2:-} dir
    for dir in "$PREFIX"/releases/*; do
        [ -d "$dir" ] || continue
        case "$(basename "$dir")" in
            "$keep_a"|"$keep_b") ;;
            *) rm -rf "$dir"; log "removed old release $(basename "$dir")" ;;
        esac
    done
}

journal_tail() {
    if command -v journalctl >/dev/null 2>&1; then
        log "last journal lines of $SERVICE:"
        journalctl -u "$SERVICE" -n 30 --no-pager -o short-monotonic 2>/dev/null | sed 's/^/    /' >&2 || true
    fi
}

# Restart (or start) the service and wait for READY=1; systemctl blocks until then for Type=notify.
restart_and_wait() {
    local began=$SECONDS
    log "starting $SERVICE and waiting for READY"
    if timeout "$ready_timeout" systemctl restart "$SERVICE"; then
        log "$SERVICE is ready ($(( SECONDS - began )) s): $(systemctl show -p StatusText --value "$SERVICE")"
        return 0
    fi
    log "$SERVICE did not become ready"
    systemctl status --no-pager --lines=0 "$SERVICE" >&2 || true
    journal_tail
    return 1
}

install_code() {
    local id current
    id=$(release_id)
    current=$(current_release)
    if [ "$current" = "$id" ] && release_complete "$id"; then
        return 0
    fi
    if [ -n "$current" ] && [ "$mode" != upgrade ]; then
        log "release $current is installed and this checkout is $id: run with --upgrade to replace it"
        return 0
    fi
    if ! release_complete "$id"; then
        build_release "$(code_source)" "$id" || die "installing the Python packages failed; nothing was changed"
    fi
    if ! check_release "$PREFIX/releases/$id"; then
        [ "$id" != "$current" ] && rm -rf "${PREFIX:?}/releases/$id"
        die "release $id failed its checks; ${current:+still on $current, }nothing was switched"
    fi
    point_current_at "$id"
    if [ "$mode" = upgrade ] && [ -n "$current" ] && [ "$start" = yes ] && systemd_running; then
        if ! restart_and_wait; then
            log "rolling back to $current"
            point_current_at "$current"
            rm -rf "${PREFIX:?}/releases/$id"
            restart_and_wait || true
            die "upgrade to $id failed and was rolled back to $current"
        fi
        service_restarted=yes
    fi
    prune_releases "$id" "$current"
}

start_service() {
    if [ "$start" = no ]; then
        return
    fi
    if ! systemd_running; then
        log "systemd is not running here (chroot or container): $SERVICE is enabled and starts at boot"
        return
    fi
    if [ "$reboot_needed" = yes ]; then
        log "the hardware setup changed: reboot to finish (sudo reboot); the service starts by itself"
        return
    fi
    if [ "${service_restarted:-no}" = yes ]; then
        return
    fi
    if [ "$changes" -gt 0 ] || ! systemctl is-active --quiet "$SERVICE"; then
        restart_and_wait || exit 1
    fi
}

do_install() {
    if [ -z "$preset" ]; then
        preset=$(cat "$PREFIX/preset" 2>/dev/null || echo usb)
    fi
    apply_preset "$preset"
    ensure_packages
    ensure_user
    ensure_dirs
    ensure_config
    ensure_credentials
    ensure_devices
    ensure_alsa
    ensure_buses
    install_code
    ensure_units
    start_service
    if [ "$changes" -eq 0 ]; then
        log "nothing to change: the appliance is installed as asked"
    else
        log "done: $changes change(s)"
    fi
    if [ "$reboot_needed" = yes ]; then
        log "reboot needed for the hardware changes (sudo reboot)"
    fi
}

do_uninstall() {
    local unit
    if systemctl list-unit-files "$SERVICE" >/dev/null 2>&1 && [ -e "$UNIT_DIR/$SERVICE" ]; then
        if systemd_running; then
            systemctl disable --now "$SERVICE" appliance-retry.timer 2>&1 | sed 's/^/install.sh: /' >&2 || true
        else
            systemctl disable "$SERVICE" 2>&1 | sed 's/^/install.sh: /' >&2 || true
        fi
        changed "disabled $SERVICE"
    fi
    for unit in appliance.service appliance-retry.timer; do
        if [ -e "$UNIT_DIR/$unit" ]; then
            rm -f "$UNIT_DIR/$unit"
            changed "removed $UNIT_DIR/$unit"
        fi
    done
    if systemd_running; then
        systemctl daemon-reload
        systemctl reset-failed "$SERVICE" 2>/dev/null || true
    fi
    if [ -e "$PREFIX" ]; then
        rm -rf "$PREFIX"
        changed "removed $PREFIX"
    fi
    local file
    for file in "$ASOUND" "$MODULES_FILE" "$UDEV_RULES"; do
        if [ -e "$file" ] && ours_or_absent "$file"; then
            rm -f "$file"
            changed "removed $file"
        fi
    done
    if getent passwd "$SVC_USER" >/dev/null; then
        userdel "$SVC_USER"
        changed "removed user $SVC_USER"
    fi
    if getent group "$SVC_USER" >/dev/null; then
        groupdel "$SVC_USER"
        changed "removed group $SVC_USER"
    fi
    if [ "$purge" = yes ]; then
        for file in "$ETC" "$STATE" /var/cache/appliance; do
            if [ -e "$file" ]; then
                rm -rf "$file"
                changed "removed $file"
            fi
        done
    else
        log "kept $ETC (configuration, API keys) and $STATE (history); --uninstall --purge removes them"
    fi
    log "SPI/I2C settings and boot overlays were left as they are"
    log "uninstalled ($changes change(s))"
}

case "$mode" in
    install|upgrade) do_install ;;
    uninstall) do_uninstall ;;
esac
