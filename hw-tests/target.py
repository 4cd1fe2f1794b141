"""The device under test: a virtual Pi booted here under QEMU, or a real Pi given as ``HW_TARGET=user@host``.

Everything the suite does to the target goes through SSH and the target's own tools. The virtual Pi is
reached only through QEMU port forwards bound to 127.0.0.1, and its user-mode network is restricted: the
guest cannot reach the host or anything beyond it.
"""

from __future__ import annotations

import io
import os
import shlex
import shutil
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# What a checkout ships to the target (install.sh builds the wheel from it there).
SHIPPED = ("pyproject.toml", "README.md", "appliance", "provisioning", "systemd", "tests/__init__.py", "tests/fakes")


class TargetError(Exception):
    pass


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass
class Target:
    """A machine reached over SSH. ``sudo`` is prefixed to every command when the user is not root."""

    destination: str
    port: int = 22
    key: Path | None = None
    sudo: bool = False
    log: list[str] = field(default_factory=list)

    def _ssh(self) -> list[str]:
        args = [
            "ssh",
            "-p",
            str(self.port),
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "ServerAliveInterval=5",
            "-o",
            "LogLevel=ERROR",
        ]
        if self.key is not None:
            args += [
                "-i",
                str(self.key),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "IdentitiesOnly=yes",
            ]
        return [*args, self.destination]

    def run(self, command: str, *, check: bool = True, timeout: float = 300, stdin: bytes | None = None) -> Result:
        remote = f"sudo -n sh -c {shlex.quote(command)}" if self.sudo else command
        self.log.append(command)
        try:
            proc = subprocess.run([*self._ssh(), remote], input=stdin, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise TargetError(f"{command!r} did not finish within {timeout} s") from exc
        result = Result(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))
        if check and proc.returncode != 0:
            raise TargetError(f"{command!r} exited {proc.returncode}:\n{result.output[-4000:]}")
        return result

    def reachable(self) -> bool:
        try:
            return self.run("true", check=False, timeout=15).returncode == 0
        except TargetError:
            return False

    def wait_reachable(self, timeout: float) -> float:
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            if self.reachable():
                return time.monotonic() - began
            time.sleep(1)
        raise TargetError(f"{self.destination}:{self.port} not reachable over SSH within {timeout} s")

    def put_tree(self, paths: dict[str, Path], dest: str) -> None:
        """Copy local files/folders (name in the archive -> local path) into ``dest`` on the target."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for name, path in paths.items():
                tar.add(path, arcname=name, filter=_skip_junk)
        self.run(f"rm -rf {dest} && mkdir -p {dest} && tar -xzf - -C {dest}", stdin=buffer.getvalue())

    def put_file(self, data: bytes, dest: str, mode: str = "0644") -> None:
        self.run(f"cat > {dest}.tmp && chmod {mode} {dest}.tmp && mv {dest}.tmp {dest}", stdin=data)

    def get_file(self, path: str) -> bytes:
        proc = subprocess.run(
            [*self._ssh(), f"{'sudo -n ' if self.sudo else ''}cat {shlex.quote(path)}"],
            capture_output=True,
            timeout=120,
        )
        if proc.returncode != 0:
            raise TargetError(f"cannot read {path}: {proc.stderr.decode(errors='replace')}")
        return proc.stdout

    # -- systemd helpers ------------------------------------------------------------------------------

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str = "appliance.service", lines: int = 60) -> str:
        return self.run(f"journalctl -u {unit} -n {lines} --no-pager -o short-monotonic", check=False).output


def _skip_junk(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    name = os.path.basename(info.name)
    if name in {"__pycache__", ".pytest_cache"} or name.endswith((".pyc", ".egg-info")):
        return None
    return info


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class VirtualPi:
    """A QEMU guest booted from the cached image, with a throw-away copy-on-write layer per run."""

    image_dir: Path
    workdir: Path
    arch: str = "amd64"
    memory_mb: int = 1536
    ssh_port: int = 0
    api_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    accel: str = ""

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    def command(self) -> list[str]:
        overlay = self.workdir / "disk.qcow2"
        forwards = f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22,hostfwd=tcp:127.0.0.1:{self.api_port}-:8080"
        common = [
            "-m",
            str(self.memory_mb),
            "-smp",
            "2",
            "-nographic",
            "-nodefaults",
            "-kernel",
            str(self.image_dir / "vmlinuz"),
            "-initrd",
            str(self.image_dir / "initrd.img"),
            "-drive",
            f"file={overlay},if=virtio,format=qcow2",
            # restrict=on: the guest reaches nothing outside itself; only the forwards above reach in.
            "-netdev",
            f"user,id=net0,restrict=on,{forwards}",
            "-device",
            "virtio-net-pci,netdev=net0",
            "-serial",
            f"file:{self.console_log}",
        ]
        if self.arch == "arm64":
            return [
                "qemu-system-aarch64",
                "-M",
                "virt",
                "-cpu",
                "cortex-a72",
                "-accel",
                "tcg",
                "-append",
                "root=/dev/vda rw console=ttyAMA0 quiet",
                *common,
            ]
        accel = ["-accel", "kvm"] if self.accel == "kvm" else ["-accel", "tcg", "-cpu", "max"]
        return ["qemu-system-x86_64", "-M", "q35", *accel, "-append", "root=/dev/vda rw console=ttyS0 quiet", *common]

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        overlay = self.workdir / "disk.qcow2"
        overlay.unlink(missing_ok=True)
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "raw",
                "-b",
                str((self.image_dir / "disk.img").resolve()),
                str(overlay),
            ],
            check=True,
        )
        self.ssh_port = self.ssh_port or free_port()
        self.api_port = self.api_port or free_port()
        if not self.accel:
            # TCG by default: where /dev/kvm exists here it is nested and unreliable (guests hang or
            # QEMU aborts on MSRs). HW_ACCEL=kvm for a host with working KVM.
            wanted = os.environ.get("HW_ACCEL", "tcg")
            self.accel = "kvm" if wanted == "kvm" and self.arch == "amd64" and _kvm_works() else "tcg"
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "qemu.log", "wb"),
        )

    def target(self) -> Target:
        return Target("root@127.0.0.1", port=self.ssh_port, key=self.image_dir / "id_ed25519")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise TargetError(
                f"QEMU exited ({self.process.returncode}): "
                f"{(self.workdir / 'qemu.log').read_text(errors='replace')[-2000:]}\n"
                f"console: {self.console_log.read_text(errors='replace')[-2000:]}"
            )


def _kvm_works() -> bool:
    """KVM is used when /dev/kvm is there and actually starts a guest (nested virtualisation often is not)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or shutil.which("qemu-system-x86_64") is None:
        return False
    try:
        proc = subprocess.Popen(
            [
                "qemu-system-x86_64",
                "-accel",
                "kvm",
                "-M",
                "q35",
                "-m",
                "64",
                "-nodefaults",
                "-display",
                "none",
                "-no-reboot",
                "-S",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            proc.wait(timeout=3)
            return False  # exited at once: KVM refused
        except subprocess.TimeoutExpired:
            return True  # still running (paused with -S): KVM works
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    except OSError:
        return False
