#!/usr/bin/env python3
"""An INDI CCD driver for tests, with hot pixels at known places. Run it under indiserver.

``indi_simulator_ccd`` draws uniform noise only: no hot pixels, no dark current. This driver draws
what a dark library and a defect map are for: a bias, Gaussian read noise, dark current that
doubles every 6 °C, and :data:`HOT_PIXELS` at fixed positions (one of them saturates), so a test
can check that a dark frame taken through our INDI camera shows them where they were planted.

It speaks just enough INDI (protocol 1.7) for :class:`~phdserver.cameras.indi.IndiCamera`:
CONNECTION, CCD_EXPOSURE, CCD_ABORT_EXPOSURE, CCD_FRAME_TYPE, CCD_BINNING, CCD_FRAME, CCD_INFO,
CCD_TEMPERATURE, UPLOAD_MODE, CCD_GAIN and the BLOB CCD1 carrying a 16-bit FITS file.

Like real drivers that ask the hardware for optional settings after connecting, it defines
``CCD_GAIN`` last and :data:`GAIN_DEFINE_DELAY_S` after the rest of its connect burst, so a
client that describes the sensor before the driver has finished connecting misses the gain.

indiserver runs a driver as a child process with one socket as both stdin and stdout. We read
with blocking ``os.read`` after ``select`` (never O_NONBLOCK: it would apply to stdout too, and
large BLOB writes would be lost, see reference/indi.md §6), flush every message, and exit on EOF.
indiserver execs drivers by path, so the test fixture runs this file through a small wrapper
script that execs the venv's interpreter on it.
"""

from __future__ import annotations

import base64
import os
import select
import sys
import time
from typing import Final
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from phdserver.cameras.indi._xml import Event, GetProperties, IndiParser, NewVector

DEVICE: Final = "Hot Pixel Test CCD"
WIDTH: Final = 640
HEIGHT: Final = 480
PIXEL_SIZE_UM: Final = 3.75
BIAS_ADU: Final = 100.0
READ_NOISE_ADU: Final = 3.0
DARK_ADU_PER_S_AT_0C: Final = 0.5
DARK_DOUBLING_C: Final = 6.0
HOT_PIXELS: Final[tuple[tuple[int, int, float], ...]] = (
    # (y, x, dark current in ADU/s); the last one saturates in any exposure over 0.07 s
    (10, 20, 2000.0),
    (37, 611, 2500.0),
    (100, 200, 5000.0),
    (123, 456, 1500.0),
    (240, 320, 3000.0),
    (300, 100, 12000.0),
    (401, 55, 8000.0),
    (479, 639, 1.0e6),
)
GAIN_RANGE: Final = (0, 300)
GAIN_DEFINE_DELAY_S: Final = 0.3
PAUSE: Final = b""
"""In a list of replies: flush what came before and wait :data:`GAIN_DEFINE_DELAY_S`."""
_FRAME_TYPES: Final = ("FRAME_LIGHT", "FRAME_BIAS", "FRAME_DARK", "FRAME_FLAT")
_FITS_TYPES: Final = {"FRAME_LIGHT": "Light", "FRAME_BIAS": "Bias", "FRAME_DARK": "Dark",
                      "FRAME_FLAT": "Flat"}


def render(seconds: float, temperature_c: float, seed: int) -> np.ndarray:
    """The full unbinned sensor after ``seconds``, as float ADU (before clipping)."""
    rng = np.random.default_rng(seed)
    dark = DARK_ADU_PER_S_AT_0C * 2.0 ** (temperature_c / DARK_DOUBLING_C) * seconds
    image = rng.normal(BIAS_ADU + dark, READ_NOISE_ADU, (HEIGHT, WIDTH))
    for y, x, rate in HOT_PIXELS:
        image[y, x] += rate * seconds
    return image


def fits_bytes(image: np.ndarray, cards: dict[str, object]) -> bytes:
    """A minimal 16-bit FITS file (BZERO 32768) with the given extra header cards."""
    h, w = image.shape
    header = {"SIMPLE": True, "BITPIX": 16, "NAXIS": 2, "NAXIS1": w, "NAXIS2": h,
              "BZERO": 32768, "BSCALE": 1, **cards}
    text = "".join(_card(k, v) for k, v in header.items()) + "END".ljust(80)
    text += " " * (-len(text) % 2880)
    data = (image.astype(np.int32) - 32768).astype(">i2").tobytes()
    return text.encode("ascii") + data + b"\0" * (-len(data) % 2880)


def _card(key: str, value: object) -> str:
    if isinstance(value, bool):
        v = ("T" if value else "F").rjust(20)
    elif isinstance(value, int | float):
        v = f"{value:>20}" if isinstance(value, int) else f"{value:>20.6G}"
    else:
        v = "'" + str(value).replace("'", "''").ljust(8) + "'"
    return f"{key:<8}= {v}".ljust(80)[:80]


def _vector(tag: str, name: str, attrs: dict[str, str], children: list[tuple[str, dict[str, str],
            str]]) -> bytes:
    kind = tag[3:-6]  # defNumberVector -> Number
    child = ("def" if tag.startswith("def") else "one") + kind
    head = "".join(f" {k}={quoteattr(v)}" for k, v in {"device": DEVICE, "name": name,
                                                          **attrs}.items())
    body = "".join(
        f"<{child}" + "".join(f" {k}={quoteattr(v)}" for k, v in a.items()) + f">{text}</{child}>"
        for _, a, text in children
    )
    return f"<{tag}{head}>{body}</{tag}>\n".encode()


class Driver:
    """The camera's state and its answers to INDI requests."""

    def __init__(self) -> None:
        self.connected = False
        self.frame_type = "FRAME_LIGHT"
        self.binning = 1
        self.frame = [0, 0, WIDTH, HEIGHT]
        self.temperature = 0.0
        self.upload = "UPLOAD_CLIENT"
        self.gain = 0.0
        self.deadline: float | None = None
        self.exposure = 0.0
        self.frames = 0

    # -- property text ----------------------------------------------------------------------------

    def _switches(self, prefix: str, name: str, options: tuple[str, ...], on: str,
                  state: str = "Idle", rule: str = "OneOfMany") -> bytes:
        attrs = {"state": state}
        if prefix == "def":
            attrs |= {"label": name, "group": "Main", "perm": "rw", "rule": rule, "timeout": "60"}
        return _vector(f"{prefix}SwitchVector", name, attrs,
                       [(o, {"name": o}, "On" if o == on else "Off") for o in options])

    def _numbers(self, prefix: str, name: str, values: dict[str, tuple[float, float, float]],
                 state: str = "Idle", perm: str = "rw") -> bytes:
        attrs = {"state": state}
        if prefix == "def":
            attrs |= {"label": name, "group": "Main", "perm": perm, "timeout": "60"}
        children = []
        for element, (value, lo, hi) in values.items():
            a = {"name": element}
            if prefix == "def":
                a |= {"format": "%g", "min": f"{lo:g}", "max": f"{hi:g}", "step": "1"}
            children.append((element, a, f"{value:.10g}"))
        return _vector(f"{prefix}NumberVector", name, attrs, children)

    def connection(self, prefix: str, state: str = "Idle") -> bytes:
        on = "CONNECT" if self.connected else "DISCONNECT"
        return self._switches(prefix, "CONNECTION", ("CONNECT", "DISCONNECT"), on, state)

    def prop(self, prefix: str, name: str, state: str = "Idle") -> bytes:
        if name == "CCD_EXPOSURE":
            remaining = 0.0 if self.deadline is None else max(0.0, self.deadline - time.monotonic())
            return self._numbers(prefix, name, {"CCD_EXPOSURE_VALUE": (remaining, 0, 3600)}, state)
        if name == "CCD_ABORT_EXPOSURE":
            return self._switches(prefix, name, ("ABORT",), "", state, "AtMostOne")
        if name == "CCD_FRAME_TYPE":
            return self._switches(prefix, name, _FRAME_TYPES, self.frame_type, state)
        if name == "CCD_BINNING":
            b = (self.binning, 1, 4)
            return self._numbers(prefix, name, {"HOR_BIN": b, "VER_BIN": b}, state)
        if name == "CCD_FRAME":
            x, y, w, h = self.frame
            return self._numbers(prefix, name, {"X": (x, 0, WIDTH - 1), "Y": (y, 0, HEIGHT - 1),
                                                "WIDTH": (w, 1, WIDTH),
                                                "HEIGHT": (h, 1, HEIGHT)}, state)
        if name == "CCD_INFO":
            pixel = (PIXEL_SIZE_UM, 1, 40)
            return self._numbers(prefix, name, {
                "CCD_MAX_X": (WIDTH, 1, 16000), "CCD_MAX_Y": (HEIGHT, 1, 16000),
                "CCD_PIXEL_SIZE": pixel, "CCD_PIXEL_SIZE_X": pixel, "CCD_PIXEL_SIZE_Y": pixel,
                "CCD_BITSPERPIXEL": (16, 8, 64),
            }, state, perm="ro")
        if name == "CCD_TEMPERATURE":
            value = (self.temperature, -50, 50)
            return self._numbers(prefix, name, {"CCD_TEMPERATURE_VALUE": value}, state)
        if name == "UPLOAD_MODE":
            return self._switches(prefix, name, ("UPLOAD_CLIENT", "UPLOAD_LOCAL", "UPLOAD_BOTH"),
                                  self.upload, state)
        if name == "CCD_GAIN":
            return self._numbers(prefix, name, {"GAIN": (self.gain, *GAIN_RANGE)}, state)
        if name == "CCD1":
            attrs = {"state": "Idle"}
            if prefix == "def":
                attrs |= {"label": "Image", "group": "Main", "perm": "ro", "timeout": "60"}
            return _vector(f"{prefix}BLOBVector", name, attrs, [("CCD1", {"name": "CCD1"}, "")])
        raise KeyError(name)

    names: Final = ("CCD_EXPOSURE", "CCD_ABORT_EXPOSURE", "CCD_FRAME_TYPE", "CCD_BINNING",
                    "CCD_FRAME", "CCD_INFO", "CCD_TEMPERATURE", "UPLOAD_MODE", "CCD1", "CCD_GAIN")

    # -- requests ---------------------------------------------------------------------------------

    def handle(self, event: Event) -> list[bytes]:
        if isinstance(event, GetProperties):
            if event.device not in (None, DEVICE):
                return []
            wanted = [event.name] if event.name else ["CONNECTION", *self.names]
            return [self.connection("def") if n == "CONNECTION" else self.prop("def", n)
                    for n in wanted if n == "CONNECTION" or (self.connected and n in self.names)]
        if not isinstance(event, NewVector) or event.device != DEVICE:
            return []
        values = {name: e.value for name, e in event.elements.items()}
        if event.name == "CONNECTION":
            return self._connect(values.get("CONNECT") is True)
        if not self.connected or event.name not in self.names:
            return []
        if event.name == "CCD_EXPOSURE":
            self.exposure = float(values.get("CCD_EXPOSURE_VALUE", 0.0))  # type: ignore[arg-type]
            self.deadline = time.monotonic() + self.exposure
            return [self.prop("set", "CCD_EXPOSURE", "Busy")]
        if event.name == "CCD_ABORT_EXPOSURE":
            self.deadline = None
            return [self.prop("set", "CCD_ABORT_EXPOSURE", "Ok"), self.prop("set", "CCD_EXPOSURE")]
        if event.name == "CCD_FRAME_TYPE":
            self.frame_type = next((k for k, v in values.items() if v), self.frame_type)
        elif event.name == "CCD_BINNING":
            self.binning = int(values.get("HOR_BIN", self.binning))  # type: ignore[arg-type]
        elif event.name == "CCD_FRAME":
            for i, key in enumerate(("X", "Y", "WIDTH", "HEIGHT")):
                if key in values:
                    self.frame[i] = int(values[key])  # type: ignore[arg-type]
        elif event.name == "CCD_TEMPERATURE":
            self.temperature = float(values.get("CCD_TEMPERATURE_VALUE", 0.0))  # type: ignore[arg-type]
        elif event.name == "UPLOAD_MODE":
            self.upload = next((k for k, v in values.items() if v), self.upload)
        elif event.name == "CCD_GAIN":
            self.gain = float(values.get("GAIN", self.gain))  # type: ignore[arg-type]
        return [self.prop("set", event.name, "Ok")]

    def _connect(self, connect: bool) -> list[bytes]:
        if connect == self.connected:
            return [self.connection("set", "Ok")]
        self.connected = connect
        if connect:
            *first, last = self.names  # CCD_GAIN
            return [self.connection("set", "Ok"), *(self.prop("def", n) for n in first), PAUSE,
                    self.prop("def", last)]
        self.deadline = None
        gone = [f"<delProperty device={quoteattr(DEVICE)} name={quoteattr(n)}/>\n".encode()
                for n in self.names]
        return [*gone, self.connection("set", "Ok")]

    def tick(self) -> list[bytes]:
        """Finish the exposure if it is due."""
        if self.deadline is None or time.monotonic() < self.deadline:
            return []
        self.deadline = None
        self.frames += 1
        seconds = self.exposure if self.frame_type != "FRAME_BIAS" else 0.0
        image = render(seconds, self.temperature, seed=self.frames)
        x, y, w, h = self.frame
        b = self.binning
        image = image[y : y + h, x : x + w]
        hb, wb = image.shape[0] // b, image.shape[1] // b
        image = image[: hb * b, : wb * b].reshape(hb, b, wb, b).sum(axis=(1, 3))
        pixels = np.clip(np.rint(image), 0, 65535).astype(np.uint16)
        kind = _FITS_TYPES[self.frame_type]
        payload = fits_bytes(pixels, {
            "EXPTIME": self.exposure, "CCD-TEMP": self.temperature, "XBINNING": b,
            "YBINNING": b, "FRAME": kind, "IMAGETYP": f"{kind} Frame", "INSTRUME": DEVICE,
            "ROWORDER": "TOP-DOWN",
        })
        text = base64.b64encode(payload).decode("ascii")
        blob = (f"<setBLOBVector device={quoteattr(DEVICE)} name=\"CCD1\" state=\"Ok\">"
                f"<oneBLOB name=\"CCD1\" size=\"{len(payload)}\" format=\".fits\" "
                f"len=\"{len(payload)}\">{escape(text)}</oneBLOB></setBLOBVector>\n").encode()
        return [blob, self.prop("set", "CCD_EXPOSURE", "Ok")]

    def timeout(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())


def main() -> int:
    driver, parser = Driver(), IndiParser()
    stdin, out = sys.stdin.fileno(), sys.stdout.buffer
    while True:
        readable, _, _ = select.select([stdin], [], [], driver.timeout())
        replies: list[bytes] = []
        if readable:
            data = os.read(stdin, 1 << 16)
            if not data:
                return 0  # indiserver went away
            for event in parser.feed(data):
                replies += driver.handle(event)
        replies += driver.tick()
        for reply in replies:
            if reply == PAUSE:
                out.flush()
                time.sleep(GAIN_DEFINE_DELAY_S)  # busy with the hardware: requests queue up
            out.write(reply)
        out.flush()


if __name__ == "__main__":
    sys.exit(main())
