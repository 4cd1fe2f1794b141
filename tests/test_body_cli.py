"""``appliance faces`` and the body line of ``appliance check-config``."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from appliance.cli import EXIT_FAILED, EXIT_OK, main


def test_faces_command_draws_every_face_at_the_display_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "a.toml"
    config.write_text('[hardware.display]\ndriver = "st7735"\nbacklight_pin = 12\n')
    out = tmp_path / "faces"
    assert main(["-c", str(config), "faces", str(out)]) == EXIT_OK
    files = sorted(p.name for p in out.iterdir())
    assert "joy.png" in files and "sleeping-blink.png" in files and "neutral-talk.png" in files
    assert not [f for f in files if f.startswith(".")]  # no temporary files left behind
    assert Image.open(out / "joy.png").size == (160, 128)
    assert "27 pictures" in capsys.readouterr().out


def test_faces_command_reports_a_broken_image_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "img"
    images.mkdir()
    (images / "joy.png").write_bytes(b"not a png")
    config = tmp_path / "a.toml"
    config.write_text(f'[hardware.display]\nimage_folder = "{images}"\n')
    assert main(["-c", str(config), "faces", str(tmp_path / "out")]) == EXIT_FAILED
    assert "joy.png" in capsys.readouterr().err


def test_check_config_describes_the_body(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "a.toml"
    config.write_text('[hardware]\npreset = "respeaker-2mic"\n[hardware.osc]\nenabled = true\n')
    assert main(["-c", str(config), "check-config"]) == EXIT_OK
    body = [line for line in capsys.readouterr().out.splitlines() if line.startswith("body:")]
    assert body == [
        "body: preset=respeaker-2mic pins=auto leds=[apa102x3@SPI0.1] buttons=[GPIO17(talk/mute/cancel)] "
        "display=auto osc=127.0.0.1:9000"
    ]
