"""The systemd unit and the provisioning scripts, checked without installing anything.

The install itself (inside a Debian chroot) is in test_provisioning_chroot.py.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.config import load_config
from appliance.settings.secrets import PROVIDER_KEYS

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "appliance.service"
TIMER = REPO / "systemd" / "appliance-retry.timer"
INSTALL = REPO / "provisioning" / "install.sh"
SHELL_SCRIPTS = sorted(
    [*REPO.glob("provisioning/*.sh"), *REPO.glob("hw-tests/*.sh"), *REPO.glob("tests/*.sh"), REPO / ".ci" / "run"]
)


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (it is in the Makefile's APT_PACKAGES: run make deps)")
    return path


def unit_settings(path: Path = UNIT) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file, values in order (systemd allows repeated keys)."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key, []).append(value)
    return settings


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_shell_scripts_are_shellcheck_clean(script: Path) -> None:
    result = subprocess.run([need("shellcheck"), "--severity=style", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists that ExecStart= exists; the installed path is checked by the chroot test, here
    # the development venv's entry point stands in for it.
    entry = REPO / ".venv" / "bin" / "appliance"
    if not entry.exists():
        entry = Path(shutil.which("appliance") or "/bin/true")
    unit = tmp_path / "appliance.service"
    unit.write_text(UNIT.read_text().replace("/opt/appliance/current/bin/appliance", str(entry)))
    shutil.copy(TIMER, tmp_path / TIMER.name)
    result = subprocess.run(
        [need("systemd-analyze"), "verify", "--man=no", str(unit), str(tmp_path / TIMER.name)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == "", "systemd-analyze verify complained:\n" + result.stderr


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """The check above is only worth something if verify reports mistakes; make sure it does."""
    unit = tmp_path / "appliance.service"
    unit.write_text(
        UNIT.read_text()
        .replace("Type=notify", "Type=notifyy")
        .replace("/opt/appliance/current/bin/appliance", "/bin/true")
    )
    result = subprocess.run([need("systemd-analyze"), "verify", "--man=no", str(unit)], capture_output=True, text=True)
    assert "notifyy" in result.stderr


def exposure(unit: Path) -> float:
    result = subprocess.run(
        [need("systemd-analyze"), "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


def test_security_exposure_is_at_most_2(tmp_path: Path) -> None:
    score = exposure(UNIT)
    assert score <= 2.0, f"systemd-analyze security exposure {score} > 2.0 (make security lists why)"
    # And the score reacts to the hardening: without it the same service is far more exposed.
    bare = tmp_path / "appliance.service"
    lines = [
        line
        for line in UNIT.read_text().splitlines()
        if not line.startswith(("Protect", "Restrict", "Private", "SystemCall", "Capability"))
    ]
    bare.write_text("\n".join(lines) + "\n")
    assert exposure(bare) > score + 2


def test_unit_lifecycle_settings() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["Restart"] == ["on-failure"]
    assert s["ExecStart"] == ["/opt/appliance/current/bin/appliance run"]
    watchdog = int(s["WatchdogSec"][0])
    # The app stops within 2 s; systemd must give it more than that before SIGKILL.
    assert int(s["TimeoutStopSec"][0]) > 2
    assert 5 <= watchdog <= 60
    # A crash loop is throttled, and the OnFailure timer starts it again later: never given up for good.
    assert int(s["StartLimitBurst"][0]) >= 3
    assert s["OnFailure"] == ["appliance-retry.timer"]
    timer = unit_settings(TIMER)
    assert timer["Unit"] == ["appliance.service"]
    assert timer["RemainAfterElapse"] == ["no"]


def test_unit_runs_as_its_own_user_with_its_directories() -> None:
    s = unit_settings()
    assert s["User"] == ["appliance"]
    assert s["SupplementaryGroups"] == ["audio gpio spi i2c"]
    assert s["ConfigurationDirectory"] == ["appliance"]
    assert s["StateDirectory"] == ["appliance"]
    assert "DynamicUser" not in s


def test_unit_credentials_are_the_ones_the_app_reads() -> None:
    s = unit_settings()
    loaded = {entry.split(":", 1)[0]: entry.split(":", 1)[1] for entry in s["LoadCredential"]}
    from appliance.settings.mqtt import CREDENTIAL_NAME as MQTT_PASSWORD

    app_reads = {credential for _, credential in PROVIDER_KEYS.values()} | {
        "remote_api_key",
        "control_token",
        MQTT_PASSWORD,
    }
    assert set(loaded) == app_reads
    for name, source in loaded.items():
        assert source == f"/etc/appliance/credentials/{name}"


def test_unit_hardening_list() -> None:
    s = unit_settings()
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "CapabilityBoundingSet": "",
        "DevicePolicy": "closed",
    }
    for key, value in expected.items():
        assert s.get(key) == [value], key
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert "@system-service" in s["SystemCallFilter"]
    allowed = {entry.split()[0] for entry in s["DeviceAllow"]}
    assert allowed == {"char-alsa", "char-gpiochip", "char-spi", "char-i2c"}
    assert "PrivateDevices" not in s  # it would hide the sound card


def test_unit_environment_names_no_unknown_config_override() -> None:
    """APPLIANCE_* variables are config overrides and unknown ones are errors: the unit may only set real ones."""
    environ = dict(entry.split("=", 1) for entry in unit_settings()["Environment"])
    overrides = {k: v for k, v in environ.items() if k.startswith("APPLIANCE_") and k != "APPLIANCE_CONFIG"}
    load_config(REPO / "provisioning" / "appliance.toml.example", overrides)


def test_example_config_is_valid_and_has_no_secrets() -> None:
    example = REPO / "provisioning" / "appliance.toml.example"
    config = load_config(example, environ={})
    assert config.llm.api_key is None
    assert config.hardware.preset == "breadboard-rgb"
    assert [b.pin for b in config.hardware.buttons] == [17]
    assert "api_key =" not in example.read_text()


def test_config_parser_can_read_the_unit() -> None:
    """Unit files are ini-like; a stray character that breaks this usually breaks systemd's view too."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    assert parser.sections() == ["Unit", "Service", "Install"]
    assert parser["Install"]["WantedBy"] == "multi-user.target"


def test_install_sh_help_and_package_list() -> None:
    help_text = subprocess.run([str(INSTALL), "--help"], capture_output=True, text=True, check=True).stdout
    for option in ("--upgrade", "--uninstall", "--purge", "--preset", "--wheelhouse"):
        assert option in help_text
    packages = subprocess.run([str(INSTALL), "--print-packages"], capture_output=True, text=True, check=True)
    names = packages.stdout.split()
    assert "python3-venv" in names and "libportaudio2" in names
    assert not any(name.startswith("#") for name in names)


def test_install_sh_rejects_unknown_options() -> None:
    result = subprocess.run([str(INSTALL), "--frobnicate"], capture_output=True, text=True)
    assert result.returncode != 0
    assert "unknown option: --frobnicate" in result.stderr


def test_install_sh_purge_needs_uninstall() -> None:
    result = subprocess.run([str(INSTALL), "--purge"], capture_output=True, text=True)
    assert result.returncode != 0
    assert "--purge" in result.stderr


MDWE_PROBE = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux >= 6.3)
    print("unsupported"); sys.exit(0)
import cffi
try:
    cffi.FFI().callback("int(int)", lambda x: x)
except MemoryError:
    print("cffi-callback-refused")
else:
    print("cffi-callback-works")
"""


def test_memory_deny_write_execute_would_break_the_microphone() -> None:
    """Why the unit leaves MemoryDenyWriteExecute off: the kernel's equivalent (PR_SET_MDWE) makes cffi's
    callbacks, which sounddevice uses for the capture stream, fail. When a cffi release stops needing
    W+X memory this test fails, and the setting should go back into the unit."""
    assert "MemoryDenyWriteExecute" not in unit_settings()
    import sys

    result = subprocess.run([sys.executable, "-c", MDWE_PROBE], capture_output=True, text=True, check=True)
    outcome = result.stdout.strip()
    if outcome == "unsupported":
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert outcome == "cffi-callback-refused"
