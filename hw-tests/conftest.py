"""Session fixtures: boot (or reach) the target once, provision it with install.sh from this checkout.

``make hw-test`` builds the virtual Pi image and runs this suite against it; ``make hw-test
HW_TARGET=pi@robot.local`` runs the same suite against a real Pi (passwordless sudo, a loopback preset is
installed for the audio checks: see the README).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from target import REPO, SHIPPED, Target, TargetError, VirtualPi

ARCH = os.environ.get("HW_ARCH", "amd64")
# How much longer everything takes than on the amd64 guest: an arm64 guest under TCG is ~4x slower. Waits
# (never the figures printed) are stretched by this; a real Pi is faster than either.
TIME_SCALE = float(os.environ.get("HW_TIME_SCALE") or (4 if ARCH == "arm64" and not os.environ.get("HW_TARGET") else 1))
IMAGE_DIR = Path(os.environ.get("HW_IMAGE_DIR", REPO / ".cache" / "vm" / ARCH))
WHEELHOUSE = Path(os.environ.get("HW_WHEELHOUSE", REPO / ".cache" / "wheelhouse"))
FAKE_CLOUD_PORT = 8765
FAKE_KEY = "sk-hwtest-not-a-real-key"
# tests/fakes/cloud.py's web stack, beyond what the appliance itself installs.
FAKE_CLOUD_PACKAGES = (
    "hypercorn",
    "starlette",
    "python-multipart",
    "h11",
    "h2",
    "hpack",
    "hyperframe",
    "priority",
    "wsproto",
)

# The appliance's configuration on the target: loopback audio, the gpio-sim header, the fake cloud on the
# target's own loopback.
CONFIG = f"""
[conversation]
brain = "cloud"

[audio]
input = "device"
output = "device"

[listening]
mode = "always"

[stt]
base_url = "http://127.0.0.1:{FAKE_CLOUD_PORT}/v1"

[llm]
base_url = "http://127.0.0.1:{FAKE_CLOUD_PORT}/v1"

[tts]
base_url = "http://127.0.0.1:{FAKE_CLOUD_PORT}/v1"

[hardware]
pin_factory = "{os.environ.get("HW_PIN_FACTORY", "lgpio")}"
preset = "breadboard-rgb"  # RGB LED on 5/6/13

# The tests hold the button down while they sample the LEDs: push-to-talk, so a hold is talking
# (with the default "talk" press, holding 1.5 s is the mute gesture).
[[hardware.buttons]]
pin = 17
press = "push_to_talk"
hold = "none"

# Solid colours at full brightness, so sampling a GPIO line reads the state's colour; the moving patterns
# (pulse, spin, blink, level) are checked on mock pins by tests/test_body_leds.py.
[hardware.patterns]
listening = {{ pattern = "solid", colour = "#0040ff" }}
thinking = {{ pattern = "solid", colour = "#ffa000" }}
speaking = {{ pattern = "solid", colour = "#00ff40" }}
error = {{ pattern = "solid", colour = "#ff0060" }}
muted = {{ pattern = "solid", colour = "#ff0000" }}

[log]
level = "DEBUG"
"""


def figure(name: str, value: float, unit: str = "s", note: str = "") -> None:
    """Print a measured figure in the bench format (shown with ``-s`` and in the make hw-test output)."""
    line = f"  HW FIGURE {name:44} {value:9.2f} {unit:4} {note}"
    print(line, flush=True)
    with open(REPO / ".cache" / "hw-figures.txt", "a") as fh:
        fh.write(line + "\n")


@pytest.fixture(scope="session")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Target, VirtualPi | None]]:
    (REPO / ".cache").mkdir(exist_ok=True)
    given = os.environ.get("HW_TARGET")
    if given:
        user = given.split("@", 1)[0] if "@" in given else os.environ.get("USER", "root")
        key = os.environ.get("HW_SSH_KEY")
        yield (
            Target(
                given,
                port=int(os.environ.get("HW_SSH_PORT", "22")),
                key=Path(key) if key else None,
                sudo=user != "root",
            ),
            None,
        )
        return
    if not (IMAGE_DIR / "image.stamp").exists():
        pytest.fail(f"no virtual Pi image in {IMAGE_DIR}: run `make hw-test` (it builds one)")
    vm = VirtualPi(IMAGE_DIR, tmp_path_factory.mktemp("vm"), arch=ARCH)
    began = time.monotonic()
    vm.start()
    target = vm.target()
    try:
        while True:
            vm.check_alive()
            if target.reachable():
                break
            if time.monotonic() - began > 600:
                raise TargetError(
                    f"the virtual Pi did not answer SSH in 600 s; console:\n"
                    f"{vm.console_log.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(2)
        figure(f"virtual Pi boot to SSH ({ARCH}, {vm.accel})", time.monotonic() - began)
        yield target, vm
    finally:
        vm.stop()


@pytest.fixture(scope="session")
def target(machine: tuple[Target, VirtualPi | None]) -> Target:
    return machine[0]


@pytest.fixture(scope="session")
def vm(machine: tuple[Target, VirtualPi | None]) -> VirtualPi | None:
    return machine[1]


@pytest.fixture(scope="session")
def provisioned(target: Target, vm: VirtualPi | None) -> Target:
    """install.sh from this working tree, with the fake cloud running inside the target."""
    began = time.monotonic()
    files = {name: REPO / name for name in SHIPPED if (REPO / name).exists()}
    target.put_tree(files, "/root/appliance-src")
    offline = ""
    if vm is not None or os.environ.get("HW_OFFLINE"):
        target.put_tree({".": WHEELHOUSE}, "/root/wheelhouse")
        offline = "--wheelhouse /root/wheelhouse"
    # Our configuration goes in first: install.sh never overwrites an existing one.
    target.run("install -d -m 0755 /etc/appliance")
    config = CONFIG
    # The simulated header's chip number: 0 on the amd64 guest, 1 on arm64's virt machine (its PL061
    # controller, wired to the power button, comes first).
    chip = target.run("basename $(ls -d /sys/devices/platform/gpio-sim.*/gpiochip* | head -n1)", check=False).stdout
    if chip.strip().startswith("gpiochip"):
        number = int(chip.strip().removeprefix("gpiochip"))
        config = config.replace('preset = "breadboard-rgb"', f'preset = "breadboard-rgb"\ngpio_chip = {number}', 1)
    target.put_file(config.encode(), "/etc/appliance/appliance.toml", "0640")
    key = "/root/fake-key"
    target.put_file(FAKE_KEY.encode() + b"\n", key, "0600")
    result = target.run(
        f"/root/appliance-src/provisioning/install.sh --preset loopback --non-interactive {offline} "
        f"--openai-key-file {key}",
        timeout=1800,
    )
    assert FAKE_KEY not in result.output
    figure("provisioning (install.sh, first run)", time.monotonic() - began)
    # The fake cloud: the same server the unit tests use, run by the installed interpreter with its few
    # extra packages beside it, on the target's own loopback.
    index = "--no-index --find-links /root/wheelhouse" if offline else ""
    target.run(
        f"test -d /root/fake-deps || /opt/appliance/current/bin/pip install --quiet {index} --no-deps "
        f"--target /root/fake-deps {' '.join(FAKE_CLOUD_PACKAGES)}",
        timeout=900,
    )
    target.run(
        "systemctl stop fake-cloud 2>/dev/null; systemctl reset-failed fake-cloud 2>/dev/null; "
        "systemd-run --unit=fake-cloud --working-directory=/root/appliance-src -E PYTHONPATH=/root/fake-deps "
        f"/opt/appliance/current/bin/python -m tests.fakes.cloud --port {FAKE_CLOUD_PORT} "
        # A reply that streams for several seconds, so a test can stop the robot in the middle of it.
        "--token-delay 0.4",
        check=False,
    )
    target.run(
        f"for i in $(seq 120); do curl -s -o /dev/null http://127.0.0.1:{FAKE_CLOUD_PORT}/ && exit 0; "
        "sleep 1; done; journalctl -u fake-cloud --no-pager | tail; exit 1",
        timeout=180,
    )
    return target
