"""Arming an INDI camera: connect the device and set it up for phdserver.

:func:`arm_device` connects the device (``CONNECTION.CONNECT``), waits for ``<P>EXPOSURE``, the
chip's BLOB and ``<P>INFO`` with a sensor size (``<P>`` is ``CCD_`` or ``GUIDER_``), forces
``UPLOAD_MODE`` to ``UPLOAD_CLIENT`` (waiting for the answer, so that every property the driver
defines on connect is known), compression off and FITS transfer where those properties exist,
enables the chip's BLOB and describes the sensor. The camera runs it at connect and again
by itself after a server or driver restart.
"""

from __future__ import annotations

import contextlib

import trio

from phdserver.cameras.base import CameraInfo
from phdserver.cameras.indi._client import IndiClient, IndiTimeout, Property
from phdserver.cameras.indi._settings import IndiSettings
from phdserver.cameras.indi._xml import Event, SetVector
from phdserver.errors import CameraError

__all__ = ["arm_device", "describe_sensor", "send_switch_if_present"]

_INFO_SETTLE_S = 1.0
"""Drivers fill ``<P>INFO`` in several steps after CONNECT; wait this long for all of it."""

_BARRIER_S = 2.0
"""The longest wait for the driver's answer to ``UPLOAD_MODE`` (see :func:`arm_device`)."""


async def arm_device(client: IndiClient, settings: IndiSettings, camera_name: str,
                     timeout_s: float) -> CameraInfo:
    """Connect the INDI device and set it up for us; the sensor, named ``camera_name``."""
    s, dev, c = settings, settings.device, client
    deadline = trio.current_time() + timeout_s

    def left() -> float:
        return max(0.0, deadline - trio.current_time())

    try:
        conn = await c.wait_property(
            dev, "CONNECTION", timeout_s=left(), what=f"device '{dev}'"
        )
    except IndiTimeout as exc:
        others = ", ".join(d for d in c.devices()) or "none"
        raise CameraError(
            f"INDI: no device '{dev}' on indiserver at {c.address} (devices: {others})"
        ) from exc
    if not (conn.switch("CONNECT") and conn.state == "Ok"):
        def settled(ev: Event) -> bool:
            return (isinstance(ev, SetVector) and ev.device == dev
                    and ev.name == "CONNECTION" and ev.state in ("Ok", "Alert"))

        with c.watch(settled, device=dev) as w:
            await c.send_new_switch(dev, "CONNECTION", {"CONNECT": True})
            await w.wait(timeout_s=left(), what=f"'{dev}' to connect")
        conn = c.property(dev, "CONNECTION")
        if conn is None or not conn.switch("CONNECT") or conn.state != "Ok":
            detail = c.last_message(dev)
            raise CameraError(
                f"INDI: '{dev}' failed to connect" + (f": {detail}" if detail else "")
            )
    for name in (f"{s.prefix}EXPOSURE", s.blob, f"{s.prefix}INFO"):
        await c.wait_property(dev, name, timeout_s=left(), what=f"'{dev}.{name}'")
    info_name = f"{s.prefix}INFO"
    sized = await c.wait_property(
        dev, info_name, lambda p: _positive(p, "CCD_MAX_X", "CCD_MAX_Y"), timeout_s=left(),
        what=f"the sensor size in '{dev}.{info_name}'",
    )
    with trio.move_on_after(min(_INFO_SETTLE_S, left())):
        sized = await c.wait_property(
            dev, info_name,
            lambda p: _positive(p, "CCD_MAX_X", "CCD_MAX_Y", "CCD_BITSPERPIXEL")
            and (_positive(p, "CCD_PIXEL_SIZE") or _positive(p, "CCD_PIXEL_SIZE_X")),
            timeout_s=left() + 1,
        )
    # The answer to UPLOAD_MODE is a barrier. After CONNECT a driver defines its properties in
    # one burst, optional ones such as CCD_GAIN late in it (after <P>INFO in
    # indi_simulator_ccd); it handles requests one at a time, in order, so its answer comes
    # after the whole burst and describe_sensor then sees every property the driver has.
    await send_switch_if_present(c, dev, "UPLOAD_MODE", "UPLOAD_CLIENT",
                                 answer_within_s=min(_BARRIER_S, left()))
    await send_switch_if_present(c, dev, f"{s.prefix}COMPRESSION", "INDI_DISABLED", "CCD_RAW")
    await send_switch_if_present(c, dev, "CCD_TRANSFER_FORMAT", "FORMAT_FITS")
    await c.enable_blob(dev, s.blob, "Also")
    return describe_sensor(c, settings, camera_name, sized)


def describe_sensor(client: IndiClient, settings: IndiSettings, camera_name: str,
                    info: Property) -> CameraInfo:
    """The sensor as ``<P>INFO``, ``<P>BINNING``, ``CCD_GAIN`` and the cooler describe it."""
    c, dev = client, settings.device
    binning = c.property(dev, f"{settings.prefix}BINNING")
    hor = binning.elements.get("HOR_BIN") if binning is not None else None
    max_binning = int(hor.max) if hor is not None and hor.max and hor.max >= 1 else 1
    gain = c.property(dev, "CCD_GAIN")
    g = gain.elements.get("GAIN") if gain is not None else None
    gain_range = (
        (round(g.min), round(g.max)) if g is not None and g.min is not None and g.max else None
    )
    sensor = c.property(dev, "CCD_TEMPERATURE")
    has_cooler = c.property(dev, "CCD_COOLER") is not None or (
        sensor is not None and sensor.perm != "ro"
    )
    optional: dict[str, float] = {}  # unknown values keep CameraInfo's defaults
    pixel = info.number("CCD_PIXEL_SIZE") or info.number("CCD_PIXEL_SIZE_X") or 0.0
    if pixel > 0:
        optional["pixel_size_um"] = round(pixel, 3)
    bpp = int(info.number("CCD_BITSPERPIXEL") or 0)
    if 8 <= bpp <= 16:
        optional["bits_per_pixel"] = bpp
    return CameraInfo(
        name=camera_name, width=int(info.number("CCD_MAX_X") or 0),
        height=int(info.number("CCD_MAX_Y") or 0), max_binning=max_binning,
        has_shutter=False, has_cooler=has_cooler, gain_range=gain_range,
        **optional,  # type: ignore[arg-type]
    )


async def send_switch_if_present(client: IndiClient, device: str, name: str,
                                 *choices: str, answer_within_s: float | None = None) -> None:
    """Turn on the first of ``choices`` that the property has (if the property exists).

    With ``answer_within_s``, wait that long at most for the driver's answer (a
    ``set*Vector`` of the property); a driver that does not answer is not an error.
    """
    prop = client.property(device, name)
    if prop is None:
        return
    choice = next((c for c in choices if c in prop.elements), None)
    if choice is None:
        return
    if answer_within_s is None:
        await client.send_new_switch(device, name, {choice: True})
        return

    def answered(ev: Event) -> bool:
        return isinstance(ev, SetVector) and ev.device == device and ev.name == name

    with client.watch(answered, device=device) as w:
        await client.send_new_switch(device, name, {choice: True})
        with contextlib.suppress(IndiTimeout):
            await w.wait(timeout_s=answer_within_s, what=f"'{device}' to answer {name}")


def _positive(prop: Property, *elements: str) -> bool:
    return all((prop.number(e) or 0) > 0 for e in elements)
