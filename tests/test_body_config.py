"""[hardware] configuration: presets, pin checks, errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import AppConfig, load_config
from appliance.settings.hardware import HardwareConfig, pin_claims
from appliance.settings_base import ConfigError


def load(tmp_path: Path, toml: str) -> AppConfig:
    path = tmp_path / "appliance.toml"
    path.write_text(toml)
    return load_config(path, environ={})


def problems(tmp_path: Path, toml: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, toml)
    return info.value.problems


def test_default_is_a_simulatable_rgb_breadboard() -> None:
    hw = AppConfig().hardware
    assert hw.preset == "breadboard-rgb"
    assert [(led.kind, led.pins) for led in hw.leds] == [("rgb", [5, 6, 13])]
    assert [b.pin for b in hw.buttons] == [17]
    assert set(hw.patterns) >= {"idle", "listening", "thinking", "speaking", "muted", "error", "offline", "fallback"}


def test_respeaker_preset_names_the_board_not_pins(tmp_path: Path) -> None:
    hw = load(tmp_path, '[hardware]\npreset = "respeaker-2mic"\n').hardware
    assert [(led.kind, led.count, led.spi_port, led.spi_device) for led in hw.leds] == [("apa102", 3, 0, 1)]
    assert [b.pin for b in hw.buttons] == [17]
    claimed = {pin for pin, _, _ in pin_claims(hw)}
    assert {7, 10, 11, 17, 18, 19, 20, 21} <= claimed  # SPI0 CE1/MOSI/SCLK, button, I2S


def test_breadboard_preset_is_one_led_and_a_button(tmp_path: Path) -> None:
    hw = load(tmp_path, '[hardware]\npreset = "breadboard"\n').hardware
    assert [(led.kind, led.pins) for led in hw.leds] == [("pwm", [18])]
    assert [b.pin for b in hw.buttons] == [17]


def test_fields_next_to_a_preset_replace_that_part(tmp_path: Path) -> None:
    hw = load(
        tmp_path,
        '[hardware]\npreset = "respeaker-2mic"\n'
        '[[hardware.buttons]]\npin = 26\npress = "push_to_talk"\nhold = "none"\n',
    ).hardware
    assert [b.pin for b in hw.buttons] == [26]
    assert hw.leds[0].kind == "apa102"  # the preset's LEDs stay


def test_unknown_preset_is_an_error_naming_the_field(tmp_path: Path) -> None:
    found = problems(tmp_path, '[hardware]\npreset = "respeaker-6mic"\n')
    assert len(found) == 1
    assert found[0].startswith("hardware.preset:")
    assert "respeaker-2mic" in found[0]


def test_pin_out_of_range_names_the_field(tmp_path: Path) -> None:
    found = problems(tmp_path, '[hardware]\npreset = "none"\n[[hardware.leds]]\nkind = "pwm"\npins = [40]\n')
    assert found[0].startswith("hardware.leds.0.pins.0:")
    assert "27" in found[0]


def test_button_pin_out_of_range_names_the_field(tmp_path: Path) -> None:
    found = problems(tmp_path, '[hardware]\npreset = "none"\n[[hardware.buttons]]\npin = -1\n')
    assert found[0].startswith("hardware.buttons.0.pin:")


def test_pin_used_twice_names_both_fields(tmp_path: Path) -> None:
    found = problems(tmp_path, '[hardware]\n[[hardware.leds]]\nkind = "rgb"\npins = [5, 6, 17]\n')
    assert "buttons.0.pin" in found[0] and "leds.0.pins.2" in found[0] and "GPIO17" in found[0]


def test_button_on_the_respeaker_audio_pins_is_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, '[hardware]\npreset = "respeaker-2mic"\n[[hardware.buttons]]\npin = 19\n')
    assert "buttons.0.pin" in found[0] and "GPIO19" in found[0] and "reserved_pins" in found[0]


def test_led_on_the_spi_bus_an_apa102_uses_is_refused() -> None:
    with pytest.raises(ValueError, match=r"leds\.1\.pins\.0: GPIO10 is used twice \(also by leds\.0"):
        HardwareConfig.model_validate(
            {"preset": "respeaker-2mic", "leds": [{"kind": "apa102"}, {"kind": "led", "pins": [10]}]}
        )


def test_spi_display_and_apa102_share_the_bus_on_different_chip_selects() -> None:
    hw = HardwareConfig.model_validate(
        {"preset": "respeaker-2mic", "display": {"driver": "st7789", "spi_device": 0, "backlight_pin": None}}
    )
    assert hw.display.resolved_interface == "spi"
    with pytest.raises(ValueError, match="chip select 1 is already used"):
        HardwareConfig.model_validate({"preset": "respeaker-2mic", "display": {"driver": "st7789", "spi_device": 1}})


def test_display_dc_pin_colliding_with_a_button_is_refused() -> None:
    with pytest.raises(ValueError, match=r"display\.dc_pin: GPIO17"):
        HardwareConfig.model_validate({"display": {"driver": "st7735", "dc_pin": 17}})


def test_wrong_pin_count_for_the_led_kind(tmp_path: Path) -> None:
    found = problems(tmp_path, '[hardware]\npreset = "none"\n[[hardware.leds]]\nkind = "rgb"\npins = [5]\n')
    assert "hardware.leds.0" in found[0] and "three pins" in found[0]


def test_push_to_talk_with_hold_mute_is_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, '[hardware]\n[[hardware.buttons]]\npin = 17\npress = "push_to_talk"\n')
    assert "hardware.buttons.0" in found[0] and "hold" in found[0]


def test_unknown_state_in_patterns_and_bad_colour(tmp_path: Path) -> None:
    found = problems(tmp_path, '[hardware.patterns.sleepy]\npattern = "solid"\n')
    assert found[0].startswith("hardware.patterns:") and "sleepy" in found[0]
    found = problems(tmp_path, '[hardware.patterns.listening]\npattern = "solid"\ncolour = "blue"\n')
    assert found[0].startswith("hardware.patterns.listening.colour:")


def test_patterns_merge_with_defaults(tmp_path: Path) -> None:
    hw = load(tmp_path, '[hardware.patterns.listening]\npattern = "pulse"\ncolour = "#FF00FF"\n').hardware
    assert hw.patterns["listening"].pattern == "pulse"
    assert hw.patterns["listening"].colour == "#ff00ff"
    assert hw.patterns["thinking"].pattern == "spin"


def test_missing_image_folder_names_the_field(tmp_path: Path) -> None:
    found = problems(tmp_path, f'[hardware.display]\nimage_folder = "{tmp_path / "nope"}"\n')
    assert found[0].startswith("hardware.display.image_folder:")


def test_osc_needs_neutral_and_a_valid_address(tmp_path: Path) -> None:
    found = problems(tmp_path, "[hardware.osc]\nenabled = true\nfaces = { joy = 1 }\n")
    assert found[0].startswith("hardware.osc:") and "neutral" in found[0]
    found = problems(tmp_path, '[hardware.osc]\nface_address = "avatar/x"\n')
    assert found[0].startswith("hardware.osc.face_address:")


def test_environment_override_of_the_preset(tmp_path: Path) -> None:
    config = load_config(None, environ={"APPLIANCE_HARDWARE__PRESET": "respeaker-2mic"})
    assert config.hardware.leds[0].kind == "apa102"
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"APPLIANCE_HARDWARE__PRESET": "hat"})
    assert "APPLIANCE_HARDWARE__PRESET" in info.value.problems[0]


def test_the_skeletons_gpio_section_still_works(tmp_path: Path) -> None:
    hw = load(
        tmp_path,
        '[gpio]\npin_factory = "mock"\nstatus_led = [16, 20, 21]\nbutton = 23\nbutton_pull_up = false\n'
        '[gpio.colours]\nidle = "#101010"\nlistening = "#00ff00"\n',
    ).hardware
    assert hw.pin_factory == "mock"
    assert [(led.kind, led.pins) for led in hw.leds] == [("rgb", [16, 20, 21])]
    assert [(b.pin, b.pull_up) for b in hw.buttons] == [(23, False)]
    assert (hw.patterns["idle"].pattern, hw.patterns["idle"].colour) == ("solid", "#101010")
    assert (hw.patterns["listening"].pattern, hw.patterns["listening"].colour) == ("solid", "#00ff00")
    none = AppConfig.model_validate({"gpio": {"status_led": None, "button": None}}).hardware
    assert none.leds == [] and none.buttons == []
    with pytest.raises(ValueError, match="used twice"):
        AppConfig.model_validate({"gpio": {"status_led": [5, 6, 5]}})
    config = load_config(None, environ={"APPLIANCE_GPIO__PIN_FACTORY": "mock"})
    assert config.hardware.pin_factory == "mock"


def test_miso_is_taken_by_the_spi_bus_too() -> None:
    with pytest.raises(ValueError, match=r"buttons\.1\.pin: GPIO9 is used twice"):
        HardwareConfig.model_validate({"preset": "respeaker-2mic", "buttons": [{"pin": 17}, {"pin": 9}]})


def test_a_pin_library_that_cannot_start_is_a_config_error() -> None:
    from appliance.bus import EventBus
    from appliance.hardware.body import build_body

    with pytest.raises(ConfigError) as info:
        build_body(EventBus(), HardwareConfig(pin_factory="native"))  # no Pi here
    assert info.value.problems[0].startswith("hardware.pin_factory: native pins cannot be used")
