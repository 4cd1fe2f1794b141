"""The README's "your own server" recipes work when copied: each TOML block is loaded as written (only the
address swapped for a local fake of the server) and a whole spoken turn runs through it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from appliance.config import load_config
from appliance.events import TurnFinished
from appliance.providers.factory import needs_key
from tests.fakes.cloud import fake_cloud
from tests.harness import running_appliance
from tests.test_promises import SPEECH

README = Path(__file__).resolve().parent.parent / "README.md"
RECIPE = re.compile(r"<!-- own-server: (?P<name>[^>]+?) -->\n```toml\n(?P<toml>.*?)```", re.S)
ADDRESS = re.compile(r"http://192\.168\.1\.10:\d+")
# What the test adds: the sound and pins of a machine without a sound card or GPIO.
TEST_BENCH = {
    "APPLIANCE_AUDIO__INPUT": "simulated",
    "APPLIANCE_AUDIO__OUTPUT": "simulated",
    "APPLIANCE_AUDIO__SIMULATED_SPEECH_AFTER": "never",
    "APPLIANCE_HARDWARE__PIN_FACTORY": "mock",
    "APPLIANCE_LOG__STATUS_LINE": "off",
}


def recipes() -> dict[str, str]:
    found = {m["name"]: m["toml"] for m in RECIPE.finditer(README.read_text(encoding="utf-8"))}
    assert len(found) >= 2, "the README's own-server recipes are gone or their markers changed"
    return found


def test_every_recipe_points_at_a_server_and_needs_no_key(tmp_path: Path) -> None:
    for name, toml in recipes().items():
        assert ADDRESS.search(toml), name
        config = load_config(_write(tmp_path / "appliance.toml", toml), dict(TEST_BENCH))
        for section in (config.stt, config.llm, config.tts):
            assert section.base_url and ADDRESS.match(section.base_url), (name, section)
            assert not needs_key("x", section.provider, section.base_url), (name, section)


@pytest.mark.parametrize("name", sorted(recipes()))
async def test_a_spoken_turn_runs_through_the_recipe(name: str, tmp_path: Path) -> None:
    toml = recipes()[name]
    async with fake_cloud() as cloud:
        path = _write(tmp_path / "appliance.toml", ADDRESS.sub(cloud.url, toml))
        config = load_config(path, dict(TEST_BENCH))  # no OPENAI_API_KEY anywhere
        assert config.conversation.brain == "auto"
        async with running_appliance(config) as (app, log):
            await app.conversation.start_turn(SPEECH)
            finished = await log.wait_for(TurnFinished)
    assert finished.outcome == "done", finished
    models = {p: [body.get("model") for body in cloud.bodies(p) if isinstance(body, dict)] for p in cloud.paths()}
    written = dict(_models_by_section(toml))
    assert models["/v1/audio/transcriptions"] == [written["stt"]]
    assert models["/v1/chat/completions"][0] == written["llm"]
    assert written["tts"] in models["/v1/audio/speech"]


def _models_by_section(toml: str) -> list[tuple[str, str]]:
    section = ""
    out = []
    for line in toml.splitlines():
        if header := re.match(r"^\[(\w+)\]", line):
            section = header[1]
        elif model := re.match(r'^model = "([^"]+)"', line):
            out.append((section, model[1]))
    return out


def _write(path: Path, toml: str) -> Path:
    path.write_text(toml, encoding="utf-8")
    return path


def test_the_configuration_sample_loads(tmp_path: Path) -> None:
    """The first block of the README's "Configuration" section is a valid configuration as written."""
    text = README.read_text(encoding="utf-8")
    sample = re.search(r"## Configuration\n.*?```toml\n(.*?)```", text, re.S)
    assert sample is not None
    config = load_config(_write(tmp_path / "appliance.toml", sample[1]), {})
    assert config.hardware.preset == "breadboard-rgb"
    assert config.listening.mode == "always"
