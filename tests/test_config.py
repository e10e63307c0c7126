"""Configuration: the TOML file, profiles, and how CLI flags override them."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from phdserver.cli import build_parser, config_from_args
from phdserver.config import Config, ConfigError, load_config

EXAMPLE = """
data_dir = "/srv/phd"
selected_profile = 2

[server]
listen = "0.0.0.0"
instance = 2
allow = ["192.168.1.0/24"]

[log]
format = "json"
level = "debug"

[[profile]]
id = 1
name = "Simulator"
camera = { type = "simulator", width = 640, height = 480 }

[[profile]]
id = 2
name = "Guide scope"
focal_length_mm = 240
gain = 60
camera = { type = "indi", host = "pi", port = 7624, device = "CCD Simulator" }
"""


def test_defaults() -> None:
    config = Config()
    assert config.selected_profile.name == "Simulator"
    assert config.selected_profile.id == 1
    assert config.server.effective_port == 4400
    assert config.server.listen == "127.0.0.1"
    assert config.data_dir.name == "phdserver"


def test_example_file(tmp_path: Path) -> None:
    path = tmp_path / "phd.toml"
    path.write_text(EXAMPLE)
    config = load_config(path)
    assert config.data_dir == Path("/srv/phd")
    assert config.server.effective_port == 4401
    assert config.server.allow == (ipaddress.ip_network("192.168.1.0/24"),)
    assert config.log_format == "json"
    profile = config.selected_profile
    assert profile.name == "Guide scope"
    assert profile.focal_length_mm == 240
    assert profile.gain == 60
    assert profile.camera.type == "indi"
    assert profile.camera.options == {"host": "pi", "port": 7624, "device": "CCD Simulator"}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[log]\nformat = 'xml'\n", "log.format"),
        ("[[profile]]\nid = 1\nname = 'a'\ncamera = { type = 'ascom' }\n", "camera type"),
        ("[[profile]]\nid = 1\nname = 'a'\n[[profile]]\nid = 1\nname = 'b'\n", "unique"),
        ("selected_profile = 9\n[[profile]]\nid = 1\nname = 'a'\n", "selected profile"),
        ("this is not toml", "phd.toml"),
    ],
)
def test_bad_files_are_reported(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "phd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load_config(path)


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "phd.toml"
    path.write_text(EXAMPLE.replace("selected_profile = 2", "selected_profile = 1"))
    args = build_parser().parse_args([
        "serve", "--config", str(path), "--port", "5000", "--listen", "127.0.0.1",
        "--data-dir", str(tmp_path), "--sim-size", "320x200", "--sim-time-scale", "0.5",
        "--sim-seed", "3", "--allow", "10.0.0.0/8", "--log-level", "warning",
    ])
    config = config_from_args(args)
    assert config.server.effective_port == 5000
    assert config.server.listen == "127.0.0.1"
    assert config.data_dir == tmp_path
    assert config.log_level == "warning"
    assert config.server.allow == (ipaddress.ip_network("10.0.0.0/8"),)
    options = config.selected_profile.camera.options
    assert options == {"width": 320, "height": 200, "time_scale": 0.5, "seed": 3}


def test_camera_flag_switches_backend(tmp_path: Path) -> None:
    args = build_parser().parse_args(["serve", "--camera", "indi", "--indi-device", "CCD X",
                                      "--indi-port", "7625"])
    profile = config_from_args(args).selected_profile
    assert profile.camera.type == "indi"
    assert profile.camera.options == {"device": "CCD X", "port": 7625}
    assert profile.name == "INDI CCD X"
    with pytest.raises(ConfigError, match="indi-device"):
        config_from_args(build_parser().parse_args(["serve", "--camera", "indi"]))
