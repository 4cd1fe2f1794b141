"""install.sh for real, inside a Debian bookworm root file system (a chroot over an overlay).

``make provisioning-test`` builds (and caches) the root file system with debootstrap and a wheelhouse with
every Python package, then runs this module: everything here is offline. Without those two (plain
``make test``), the module is skipped with the command to run.

One installation goes through its life in order: install, install again (no changes), upgrade, a broken
upgrade (rolled back), uninstall, purge. Starting the service under a running systemd is the
hardware-in-the-loop suite's job (hw-tests/).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "tests" / "chroot_run.sh"
SECRET = "sk-test-0123456789-not-a-real-key"
ROOTFS = os.environ.get("APPLIANCE_TEST_ROOTFS")
WHEELHOUSE = os.environ.get("APPLIANCE_TEST_WHEELHOUSE")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (ROOTFS and WHEELHOUSE), reason="needs the cached Debian root: run `make provisioning-test`"
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="chroot and mounts need root"),
]


@dataclass
class Result:
    returncode: int
    output: str


class Chroot:
    def __init__(self, state: Path) -> None:
        self.state = state

    @property
    def upper(self) -> Path:
        """Everything the commands changed, as files (the overlay's upper layer)."""
        return self.state / "upper"

    def run(self, *command: str, env: str = "", check: bool = True) -> Result:
        proc = subprocess.run(
            [str(RUN), str(ROOTFS), str(self.state), str(REPO), str(WHEELHOUSE), "--", *command],
            capture_output=True,
            text=True,
            env={**os.environ, "CHROOT_ENV": env},
            timeout=600,
        )
        result = Result(proc.returncode, proc.stdout + proc.stderr)
        if check and proc.returncode != 0:
            pytest.fail(f"{' '.join(command)} exited {proc.returncode}:\n{result.output}")
        return result

    def install(self, *args: str, env: str = "", check: bool = True) -> Result:
        return self.run(
            "/src/provisioning/install.sh",
            "--wheelhouse",
            "/wheelhouse",
            "--non-interactive",
            *args,
            env=env,
            check=check,
        )

    def path(self, inside: str) -> Path:
        """A path as the chroot sees it (upper layer first, then the base)."""
        upper = self.upper / inside.lstrip("/")
        if upper.is_symlink() or upper.exists():
            if stat.S_ISCHR(upper.lstat().st_mode):  # an overlay whiteout: deleted
                return self.state / "deleted" / inside.lstrip("/")
            return upper
        return Path(str(ROOTFS)) / inside.lstrip("/")

    def ids(self, name: str, database: str) -> int:
        for line in self.path(f"/etc/{database}").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == name:
                return int(fields[2])
        raise LookupError(f"{name} not in /etc/{database}")


def manifest(root: Path) -> dict[str, tuple[object, ...]]:
    """Path -> (type, mode, owner, group, mtime, content hash or link target) for every file under root."""
    entries: dict[str, tuple[object, ...]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            extra: object = os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            extra = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            extra = None
        entries[str(path.relative_to(root))] = (
            stat.S_IFMT(st.st_mode),
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            st.st_gid,
            st.st_mtime_ns,
            extra,
        )
    return entries


def mode_owner(path: Path) -> tuple[str, int, int]:
    st = path.lstat()
    return oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid


def build_wheel(tmp: Path, version: str, *, broken: bool = False) -> Path:
    """A wheel of this checkout with another version (and, if asked, a CLI that cannot start)."""
    src = tmp / f"src-{version}"
    shutil.copytree(REPO / "appliance", src / "appliance", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", src)
    if (REPO / "README.md").exists():
        shutil.copy(REPO / "README.md", src)
    init = src / "appliance" / "__init__.py"
    text = init.read_text()
    start = text.index("__version__")
    end = text.index("\n", start)
    init.write_text(text[:start] + f'__version__ = "{version}"' + text[end:])
    if broken:
        with (src / "appliance" / "cli.py").open("a") as fh:
            fh.write("\n\ndef main(argv=None):\n    raise SystemExit('this build is broken on purpose')\n")
    out = tmp / f"dist-{version}"
    subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "pip"),
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--find-links",
            str(WHEELHOUSE),
            "--wheel-dir",
            str(out),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("appliance-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert any(name.endswith("RECORD") for name in zf.namelist())
    return wheel


@pytest.fixture(scope="module")
def chroot(tmp_path_factory: pytest.TempPathFactory) -> Chroot:
    return Chroot(tmp_path_factory.mktemp("chroot"))


@pytest.fixture(scope="module")
def first_install(chroot: Chroot) -> Result:
    return chroot.install(env=f"OPENAI_API_KEY={SECRET}")


def test_first_install_creates_everything(chroot: Chroot, first_install: Result) -> None:
    assert "done:" in first_install.output
    uid, gid = chroot.ids("appliance", "passwd"), chroot.ids("appliance", "group")
    assert uid < 1000, "the service user is a system user"
    for group in ("gpio", "spi", "i2c", "audio"):
        chroot.ids(group, "group")
    passwd = next(line for line in chroot.path("/etc/passwd").read_text().splitlines() if line.startswith("appliance:"))
    assert passwd.endswith(":/var/lib/appliance:/usr/sbin/nologin")

    assert mode_owner(chroot.path("/etc/appliance")) == ("0o750", 0, gid)
    assert mode_owner(chroot.path("/etc/appliance/appliance.toml")) == ("0o640", 0, gid)
    assert (
        chroot.path("/etc/appliance/appliance.toml").read_text()
        == (REPO / "provisioning" / "appliance.toml.example").read_text()
    )
    assert mode_owner(chroot.path("/etc/appliance/credentials")) == ("0o700", 0, 0)
    assert mode_owner(chroot.path("/var/lib/appliance")) == ("0o750", uid, gid)
    for unit in ("appliance.service", "appliance-retry.timer"):
        installed = chroot.path(f"/etc/systemd/system/{unit}")
        assert installed.read_text() == (REPO / "systemd" / unit).read_text()
        assert mode_owner(installed) == ("0o644", 0, 0)
    wants = chroot.path("/etc/systemd/system/multi-user.target.wants/appliance.service")
    assert os.readlink(wants) == "/etc/systemd/system/appliance.service"
    current = chroot.path("/opt/appliance/current")
    assert os.readlink(current).startswith("releases/0.")
    assert "systemd is not running here" in first_install.output


def test_api_key_is_root_only_and_never_shown(chroot: Chroot, first_install: Result) -> None:
    key_file = chroot.path("/etc/appliance/credentials/openai_api_key")
    assert key_file.read_text() == SECRET + "\n"
    assert mode_owner(key_file) == ("0o600", 0, 0)
    # The other provider's file exists (so LoadCredential= never fails) and is empty.
    other = chroot.path("/etc/appliance/credentials/anthropic_api_key")
    assert other.read_text() == "" and mode_owner(other) == ("0o600", 0, 0)
    assert SECRET not in first_install.output
    holders = [
        p for p in chroot.upper.rglob("*") if p.is_file() and not p.is_symlink() and SECRET.encode() in p.read_bytes()
    ]
    assert holders == [key_file], f"the key was also written to {holders}"


def test_installed_app_runs_and_finds_the_key(chroot: Chroot, first_install: Result) -> None:
    version = chroot.run("/opt/appliance/current/bin/appliance", "--version").output
    assert version.startswith("appliance ")
    # As the service would: systemd hands the credentials over in $CREDENTIALS_DIRECTORY.
    check = chroot.run(
        "/opt/appliance/current/bin/appliance", "check-config", env="CREDENTIALS_DIRECTORY=/etc/appliance/credentials"
    )
    assert "configuration OK: brain=cloud" in check.output
    assert SECRET not in check.output
    # The sd_notify binding is Debian's, through the venv's system site packages.
    where = chroot.run(
        "/opt/appliance/current/bin/python", "-c", "import systemd.daemon; print(systemd.daemon.__file__)"
    )
    assert where.output.strip().startswith("/usr/lib/python3/dist-packages/")


def test_installed_unit_passes_verify(chroot: Chroot, first_install: Result) -> None:
    result = chroot.run(
        "systemd-analyze",
        "verify",
        "--man=no",
        "/etc/systemd/system/appliance.service",
        "/etc/systemd/system/appliance-retry.timer",
    )
    assert result.output.strip() == ""


def test_second_run_changes_nothing(chroot: Chroot, first_install: Result) -> None:
    before = manifest(chroot.upper)
    again = chroot.install()
    assert "nothing to change" in again.output
    assert "changed:" not in again.output
    after = manifest(chroot.upper)
    assert after == before, {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert chroot.path("/etc/appliance/credentials/openai_api_key").read_text() == SECRET + "\n"


def test_plain_install_of_other_code_does_not_replace_it(chroot: Chroot, first_install: Result, tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path, "0.0.1rc1")
    (chroot.upper / "root").mkdir(exist_ok=True)
    shutil.copy(wheel, chroot.upper / "root" / wheel.name)
    before = os.readlink(chroot.path("/opt/appliance/current"))
    result = chroot.install("--wheel", f"/root/{wheel.name}")
    assert "run with --upgrade to replace it" in result.output
    assert os.readlink(chroot.path("/opt/appliance/current")) == before


def test_upgrade_replaces_code_and_keeps_config_and_state(
    chroot: Chroot, first_install: Result, tmp_path: Path
) -> None:
    config = chroot.upper / "etc/appliance/appliance.toml"
    config.write_text(config.read_text().replace('name = "Robo"', 'name = "Pip"'))
    state = chroot.upper / "var/lib/appliance/history.json"
    state.write_text('{"turns": 3}')
    old = os.readlink(chroot.path("/opt/appliance/current"))

    wheel = build_wheel(tmp_path, "99.0.0")
    (chroot.upper / "root").mkdir(exist_ok=True)
    shutil.copy(wheel, chroot.upper / "root" / wheel.name)
    result = chroot.install("--upgrade", "--wheel", f"/root/{wheel.name}")
    new = os.readlink(chroot.path("/opt/appliance/current"))
    assert new.startswith("releases/99.0.0-") and new != old
    assert chroot.run("/opt/appliance/current/bin/appliance", "--version").output.strip() == "appliance 99.0.0"
    assert 'name = "Pip"' in config.read_text()
    assert state.read_text() == '{"turns": 3}'
    assert chroot.path(f"/opt/appliance/{old}").is_dir(), "the previous release is kept for a rollback"
    assert chroot.path("/etc/appliance/credentials/openai_api_key").read_text() == SECRET + "\n"
    assert SECRET not in result.output


def test_broken_upgrade_is_rolled_back(chroot: Chroot, first_install: Result, tmp_path: Path) -> None:
    before = os.readlink(chroot.path("/opt/appliance/current"))
    wheel = build_wheel(tmp_path, "100.0.0", broken=True)
    shutil.copy(wheel, chroot.upper / "root" / wheel.name)
    result = chroot.install("--upgrade", "--wheel", f"/root/{wheel.name}", check=False)
    assert result.returncode != 0
    assert "failed its checks" in result.output
    assert os.readlink(chroot.path("/opt/appliance/current")) == before
    assert not list((chroot.upper / "opt/appliance/releases").glob("100.0.0-*")), "the broken release was removed"
    assert chroot.run("/opt/appliance/current/bin/appliance", "--version").output.startswith("appliance 99.0.0")


def test_new_key_replaces_the_old_one(chroot: Chroot, first_install: Result) -> None:
    key_source = chroot.upper / "root" / "anthropic.key"
    key_source.parent.mkdir(exist_ok=True)
    key_source.write_text("  sk-ant-test-key  \n")
    result = chroot.install("--anthropic-key-file", "/root/anthropic.key")
    assert "changed: /etc/appliance/credentials/anthropic_api_key" in result.output
    stored = chroot.path("/etc/appliance/credentials/anthropic_api_key")
    assert stored.read_text() == "sk-ant-test-key\n"
    assert mode_owner(stored) == ("0o600", 0, 0)
    assert chroot.path("/etc/appliance/credentials/openai_api_key").read_text() == SECRET + "\n"
    assert "sk-ant-test-key" not in result.output


def test_loopback_preset_writes_alsa_defaults(chroot: Chroot, first_install: Result) -> None:
    chroot.install("--preset", "loopback")
    asound = chroot.path("/etc/asound.conf").read_text()
    assert 'slave.pcm "hw:Loopback,1,0"' in asound and 'slave.pcm "hw:Loopback,0,1"' in asound
    assert chroot.path("/etc/modules-load.d/appliance.conf").read_text().splitlines()[-1] == "snd-aloop"
    # The preset is remembered: a later plain run keeps it and changes nothing.
    assert "nothing to change" in chroot.install().output
    # A card given by name wins over the preset, and another person's asound.conf is left alone.
    chroot.install("--sound-card", "Device")
    assert 'slave.pcm "dmix:CARD=Device"' in chroot.path("/etc/asound.conf").read_text()
    (chroot.upper / "etc/asound.conf").write_text("# mine\n")
    result = chroot.install("--preset", "usb", "--sound-card", "Other")
    assert "leaving it alone" in result.output
    assert chroot.path("/etc/asound.conf").read_text() == "# mine\n"


def test_unknown_preset_is_an_error(chroot: Chroot, first_install: Result) -> None:
    result = chroot.install("--preset", "toaster", check=False)
    assert result.returncode != 0
    assert "unknown preset 'toaster'" in result.output


def test_uninstall_keeps_config_then_purge_removes_it(chroot: Chroot, first_install: Result) -> None:
    result = chroot.install("--uninstall")
    assert "kept /etc/appliance" in result.output
    for gone in (
        "/etc/systemd/system/appliance.service",
        "/etc/systemd/system/appliance-retry.timer",
        "/etc/systemd/system/multi-user.target.wants/appliance.service",
        "/opt/appliance",
        "/etc/modules-load.d/appliance.conf",
        "/etc/udev/rules.d/60-appliance-devices.rules",
    ):
        assert not chroot.path(gone).exists() and not chroot.path(gone).is_symlink(), gone
    with pytest.raises(LookupError):
        chroot.ids("appliance", "passwd")
    assert chroot.path("/etc/asound.conf").read_text() == "# mine\n", "not ours: left alone"
    assert chroot.path("/etc/appliance/credentials/openai_api_key").exists()
    assert chroot.path("/var/lib/appliance/history.json").exists()

    again = chroot.install("--uninstall")
    assert "uninstalled (0 change(s))" in again.output

    chroot.install("--uninstall", "--purge")
    for gone in ("/etc/appliance", "/var/lib/appliance"):
        assert not chroot.path(gone).exists(), gone
