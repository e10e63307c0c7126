"""Master library and light calibration tests, and the synthetic frames they share.

Frames are small (40×32) so the whole folder stays fast; sizes do not change the arithmetic.
Everything is seeded. :func:`make_scene` writes the "done means" scene of the issue: lights of
one night with N.I.N.A.-style names and headers, the right masters, and one distractor per rule
(another gain, a dark 15 °C warmer, another exposure, an older flat, a flat dated after the
lights, another filter).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

SHAPE = (32, 40)
CAMERA = "ZWO ASI2600MM Pro"
OPTIC = "RedCat 51"


def write_fits(path: Path, data: np.ndarray, **cards: Any) -> Path:
    """A single-HDU FITS file; ``uint16`` data is written as BITPIX 16 with BZERO 32768."""
    header = fits.Header()
    for key, value in cards.items():
        header[key.replace("_", "-") if key in {"SET_TEMP", "CCD_TEMP", "DATE_OBS",
                                                  "DATE_LOC"} else key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(data=data, header=header).writeto(path)
    return path


def rig(**overrides: Any) -> dict[str, Any]:
    """The header cards every frame of the rig shares."""
    cards: dict[str, Any] = {"INSTRUME": CAMERA, "TELESCOP": OPTIC, "GAIN": 100, "OFFSET": 50,
                             "XBINNING": 1, "YBINNING": 1, "READOUTM": "High Gain"}
    cards.update(overrides)
    return {k: v for k, v in cards.items() if v is not None}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: its hash and mtime (to show nothing was written or touched)."""
    return {str(p): (sha256(p), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


def nina_light_name(index: int, *, exposure_s: float = 300.0, filter_name: str = "Ha") -> str:
    return (f"2024-01-15_M31_LIGHT_FILTER_{filter_name}_EXPOSURE_{exposure_s:.2f}s_GAIN_100"
            f"_SET-TEMP_-10.00_{index:04d}.fits")


@dataclass
class Scene:
    """Paths and arrays of a written scene."""

    root: Path
    lights: list[Path] = field(default_factory=list)
    light_data: dict[Path, np.ndarray] = field(default_factory=dict)
    masters: dict[str, Path] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def master_array(self, name: str) -> np.ndarray:
        """The master as stored (float32 on disk), in float64 for reference arithmetic."""
        return fits.getdata(self.masters[name]).astype(np.float64)


DISTRACTOR_REASONS = {
    "bias_gain0": "gain 0, the light's is 100",
    "dark300_gain0": "gain 0, the light's is 100",
    "dark300_warm": "15.0 °C from the light's",
    "dark120": "exposure 120 s",
    "flat_ha_old": "ranked below",
    "flat_ha_future": "never a flat from the future",
    "flat_oiii": "filter 'OIII'",
}
"""Every master :func:`make_scene` plants beside the right ones, and a phrase of why it loses."""


def assert_distractors_rejected(lost: dict[str, str]) -> None:
    """``lost`` (master file stem -> reason) names every distractor, each for its reason."""
    assert set(lost) == set(DISTRACTOR_REASONS)
    for stem, phrase in DISTRACTOR_REASONS.items():
        assert phrase in lost[stem], (stem, lost[stem])


def make_scene(root: Path, *, light_count: int = 3, light_exposure_s: float = 300.0,
               seed: int = 1) -> Scene:
    """Write lights and masters with distractors under ``root`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    scene = Scene(root=root)
    bias = 500.0 + rng.normal(0.0, 2.0, SHAPE)
    thermal_per_s = 0.1 + 0.02 * rng.random(SHAPE)
    flat = 20000.0 * (1.0 + 0.05 * rng.normal(0.0, 1.0, SHAPE))
    masters = root / "masters"

    def master(name: str, data: np.ndarray, **cards: Any) -> None:
        scene.masters[name] = write_fits(masters / f"{name}.fits", data.astype(np.float32),
                                         **rig(**cards))
        scene.arrays[name] = data

    master("bias", bias, IMAGETYP="Master Bias", NCOMBINE=50)
    master("bias_gain0", bias - 20, IMAGETYP="Master Bias", GAIN=0)
    master("dark300", bias + 300 * thermal_per_s, IMAGETYP="Master Dark", EXPTIME=300.0,
           CCD_TEMP=-10.1, SET_TEMP=-10.0)
    master("dark300_gain0", bias + 250 * thermal_per_s, IMAGETYP="Master Dark", EXPTIME=300.0,
           CCD_TEMP=-10.0, GAIN=0)
    master("dark300_warm", bias + 900 * thermal_per_s, IMAGETYP="masterDark", EXPTIME=300.0,
           CCD_TEMP=5.2, SET_TEMP=5.0)
    master("dark120", bias + 120 * thermal_per_s, IMAGETYP="Dark Frame", NCOMBINE=30,
           EXPOSURE=120.0, CCD_TEMP=-10.0)
    master("flat_ha", flat, IMAGETYP="Master Flat", FILTER="Ha",
           DATE_OBS="2024-01-14T18:30:00")
    master("flat_ha_old", flat * 1.01, IMAGETYP="Master Flat", FILTER="Ha",
           DATE_OBS="2024-01-05T18:30:00")
    master("flat_ha_future", flat * 0.99, IMAGETYP="Master Flat", FILTER="Ha",
           DATE_OBS="2024-01-17T18:30:00")
    master("flat_oiii", flat * 1.02, IMAGETYP="Flat Field", STACKCNT=20, FILTER="OIII",
           DATE_OBS="2024-01-15T18:00:00")
    for i in range(light_count):
        path = root / "lights" / nina_light_name(i + 1, exposure_s=light_exposure_s)
        sky = 800.0 + 30.0 * rng.normal(0.0, 1.0, SHAPE)
        signal = (bias + light_exposure_s * thermal_per_s + sky * flat / 20000.0)
        data = np.clip(np.rint(signal), 0, 65535).astype(np.uint16)
        write_fits(path, data, **rig(
            IMAGETYP="LIGHT", EXPOSURE=light_exposure_s, EXPTIME=light_exposure_s,
            FILTER="Ha", SET_TEMP=-10.0, CCD_TEMP=-9.8,
            DATE_LOC=f"2024-01-15T{21 + i}:10:00.1234567",
            DATE_OBS=f"2024-01-15T{20 + i}:10:00.1234567", SITELONG=15.0,
        ))
        scene.lights.append(path)
        scene.light_data[path] = data
    return scene
