"""The simulator camera: the Camera interface, virtual-time exposures, aborts, cooler, failures.

Exposures and the cooler follow trio's clock, so these tests run under ``autojump_clock`` and
assert exact virtual times.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
import trio
import trio.testing

from phdserver.cameras.base import Camera, FrameType, Subframe
from phdserver.cameras.sensor_model import SensorConfig
from phdserver.cameras.simulator import SimulatorCamera, SimulatorSettings
from phdserver.errors import CameraError

SMALL = SensorConfig(width=320, height=240)


def make_camera(**changes: object) -> SimulatorCamera:
    options: dict[str, object] = {"sensor": SMALL, "time_scale": 0.25}
    options.update(changes)
    return SimulatorCamera(SimulatorSettings(**options))  # type: ignore[arg-type]


async def connected_camera(**changes: object) -> SimulatorCamera:
    camera = make_camera(**changes)
    await camera.connect()
    return camera


# ---------------------------------------------------------------------------------- identity


async def test_implements_the_camera_protocol() -> None:
    camera = SimulatorCamera()
    assert camera.name == "Simulator"
    assert not camera.connected
    assert camera.settings.width == 1280
    assert camera.settings.height == 960
    assert camera.settings.seed == 0
    # Checked once connected: on Python 3.11 isinstance() reads every protocol member, and
    # ``info`` rightly raises CameraError while disconnected.
    await camera.connect()
    assert isinstance(camera, Camera)


async def test_info_needs_a_connection() -> None:
    camera = make_camera()
    with pytest.raises(CameraError, match=r"^Simulator: camera not connected$"):
        _ = camera.info
    await camera.connect()
    await camera.connect()  # idempotent
    info = camera.info
    assert (info.name, info.width, info.height, info.bits_per_pixel) == ("Simulator", 320, 240, 16)
    assert (info.max_binning, info.has_shutter, info.has_cooler) == (4, True, True)
    assert info.gain_range == (0, 100)
    assert info.pixel_size_um == 3.75
    assert info.saturation == 65535
    await camera.disconnect()
    await camera.disconnect()  # idempotent
    assert not camera.connected
    with pytest.raises(CameraError, match="not connected"):
        _ = camera.info


async def test_connect_takes_the_configured_delay(autojump_clock: trio.testing.MockClock) -> None:
    camera = make_camera(connect_delay_s=2.5)
    start = trio.current_time()
    await camera.connect()
    assert trio.current_time() - start == 2.5
    assert camera.connected


# ----------------------------------------------------------------------------------- capture


async def test_capture_takes_exposure_times_time_scale(
    autojump_clock: trio.testing.MockClock,
) -> None:
    camera = await connected_camera()
    start = trio.current_time()
    before = time.time()
    frame = await camera.capture(1500, frame_type=FrameType.DARK, binning=2, gain=60)
    assert trio.current_time() - start == 0.375
    assert frame.data.dtype == np.uint16
    assert frame.data.shape == (120, 160)
    assert frame.exposure_ms == 1500
    assert frame.frame_type is FrameType.DARK
    assert (frame.binning, frame.gain) == (2, 60)
    assert frame.temperature_c == 15.0
    assert before <= frame.timestamp <= time.time()
    assert frame.headers["SIMFRAME"] == 0


async def test_frames_count_up_and_repeat_per_seed(autojump_clock: trio.testing.MockClock) -> None:
    first = await connected_camera()
    second = await connected_camera()
    frames = [await first.capture(1000, frame_type=FrameType.DARK) for _ in range(3)]
    again = [await second.capture(1000, frame_type=FrameType.DARK) for _ in range(3)]
    assert [f.headers["SIMFRAME"] for f in frames] == [0, 1, 2]
    assert first.frames_taken == 3
    assert frames[0].gain == 50  # the default gain is reported
    for a, b in zip(frames, again, strict=True):
        np.testing.assert_array_equal(a.data, b.data)
    assert not np.array_equal(frames[0].data, frames[1].data)
    other = await connected_camera(sensor=SensorConfig(width=320, height=240, seed=9))
    frame = await other.capture(1000, frame_type=FrameType.DARK)
    assert not np.array_equal(frame.data, frames[0].data)


async def test_subframe_and_light_frames(autojump_clock: trio.testing.MockClock) -> None:
    camera = await connected_camera()
    roi = Subframe(x=10, y=20, width=64, height=32)
    frame = await camera.capture(1000, subframe=roi, binning=2)
    assert frame.data.shape == (32, 64)
    assert frame.subframe == roi
    full = await camera.capture(1000)
    assert full.frame_type is FrameType.LIGHT
    expected = camera.sensor.render(1.0, FrameType.LIGHT, 15.0, 1)
    np.testing.assert_array_equal(full.data, expected)


async def test_cancelling_the_caller_aborts_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    camera = await connected_camera(time_scale=1.0)
    start = trio.current_time()
    with trio.move_on_after(2.0) as scope:
        await camera.capture(15_000, frame_type=FrameType.DARK)
    assert scope.cancelled_caught
    assert trio.current_time() - start == 2.0
    assert camera.abort_count == 1
    assert not camera.capturing
    assert camera.frames_taken == 0
    frame = await camera.capture(1000, frame_type=FrameType.DARK)
    assert frame.headers["SIMFRAME"] == 0


async def test_abort_ends_the_exposure_with_an_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    camera = await connected_camera(time_scale=1.0)
    failures: list[CameraError] = []

    async def expose() -> None:
        try:
            await camera.capture(15_000)
        except CameraError as exc:
            failures.append(exc)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(expose)
        await trio.sleep(3.0)
        assert camera.capturing
        await camera.abort()
    assert trio.current_time() - start == 3.0
    assert [f.message for f in failures] == ["Simulator: exposure aborted"]
    assert camera.abort_count == 1
    await camera.abort()  # nothing in progress: no effect
    assert camera.abort_count == 1


async def test_a_second_capture_is_refused_while_busy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    camera = await connected_camera()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(camera.capture, 10_000)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(CameraError, match="already in progress"):
            await camera.capture(1000)
        nursery.cancel_scope.cancel()
    assert camera.abort_count == 1
    assert not camera.capturing


async def test_disconnect_during_a_capture_fails_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    camera = await connected_camera()
    failures: list[CameraError] = []

    async def expose() -> None:
        with pytest.raises(CameraError, match="disconnected during the exposure") as info:
            await camera.capture(10_000)
        failures.append(info.value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(expose)
        await trio.sleep(1.0)
        await camera.disconnect()
    assert len(failures) == 1
    assert camera.abort_count == 1
    with pytest.raises(CameraError, match=r"^Simulator: camera not connected$"):
        await camera.capture(1000)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"binning": 5}, r"binning 5 not supported \(1\.\.4\)"),
        ({"binning": 0}, "binning 0 not supported"),
        ({"gain": 101}, "gain 101 outside 0..100"),
        ({"exposure_ms": -1}, "exposure must be >= 0"),
        (
            {"binning": 2, "subframe": Subframe(x=100, y=0, width=61, height=10)},
            "lies outside the 160x120 sensor at binning 2",
        ),
        ({"subframe": Subframe(x=0, y=200, width=10, height=41)}, "outside the 320x240"),
    ],
)
async def test_invalid_requests_are_refused(kwargs: dict[str, object], message: str) -> None:
    camera = await connected_camera()
    args: dict[str, object] = {"exposure_ms": 1000}
    args.update(kwargs)
    with pytest.raises(CameraError, match=message):
        await camera.capture(**args)  # type: ignore[arg-type]
    assert not camera.capturing


async def test_injected_failure_after_n_frames(autojump_clock: trio.testing.MockClock) -> None:
    camera = await connected_camera(fail_after_frames=2)
    await camera.capture(1000, frame_type=FrameType.DARK)
    await camera.capture(1000, frame_type=FrameType.DARK)
    for _ in range(2):
        with pytest.raises(CameraError, match=r"^Simulator: injected failure$"):
            await camera.capture(1000, frame_type=FrameType.DARK)
    assert camera.frames_taken == 2
    assert not camera.capturing


# ------------------------------------------------------------------------------------ cooler


async def test_cooler_starts_off_at_ambient() -> None:
    camera = make_camera()
    with pytest.raises(CameraError, match="not connected"):
        await camera.cooler_status()
    await camera.connect()
    status = await camera.cooler_status()
    assert status.temperature_c == 15.0
    assert not status.cooler_on
    assert status.power_percent == 0.0


async def test_cooler_approaches_its_setpoint(autojump_clock: trio.testing.MockClock) -> None:
    camera = await connected_camera(time_scale=1.0)
    await camera.set_cooler(True, -10.0)
    await trio.sleep(60.0)  # one time constant
    status = await camera.cooler_status()
    assert status.cooler_on
    assert status.setpoint_c == -10.0
    assert status.temperature_c == pytest.approx(-10.0 + 25.0 * math.exp(-1), abs=0.01)
    await trio.sleep(600.0)
    status = await camera.cooler_status()
    assert status.temperature_c == pytest.approx(-10.0, abs=0.01)
    assert status.power_percent == pytest.approx(62.5, abs=0.1)

    await camera.set_cooler(False)
    await trio.sleep(60.0)
    status = await camera.cooler_status()
    assert not status.cooler_on
    assert status.power_percent == 0.0
    assert status.temperature_c == pytest.approx(15.0 - 25.0 * math.exp(-1), abs=0.01)

    await camera.set_cooler(True)  # keeps the last set point
    assert (await camera.cooler_status()).setpoint_c == -10.0


async def test_cooler_time_constant_follows_time_scale(
    autojump_clock: trio.testing.MockClock,
) -> None:
    camera = await connected_camera(time_scale=0.01)
    await camera.set_cooler(True, 5.0)
    await trio.sleep(0.6)  # one scaled time constant
    status = await camera.cooler_status()
    assert status.temperature_c == pytest.approx(5.0 + 10.0 * math.exp(-1), abs=0.01)


async def test_cooler_cannot_go_below_its_limit(autojump_clock: trio.testing.MockClock) -> None:
    camera = await connected_camera(time_scale=1.0)
    await camera.set_cooler(True, -60.0)
    await trio.sleep(3600.0)
    status = await camera.cooler_status()
    assert status.temperature_c == pytest.approx(-25.0, abs=0.01)
    assert status.power_percent == pytest.approx(100.0, abs=0.1)


async def test_camera_without_cooler() -> None:
    camera = await connected_camera(has_cooler=False)
    assert not camera.info.has_cooler
    with pytest.raises(CameraError, match="no cooler"):
        await camera.set_cooler(True, 0.0)
    status = await camera.cooler_status()
    assert status.temperature_c == 15.0
    assert not status.cooler_on
    assert status.setpoint_c is None


async def test_cooling_lowers_the_dark_current(autojump_clock: trio.testing.MockClock) -> None:
    camera = await connected_camera(time_scale=1.0)
    warm = await camera.capture(30_000, frame_type=FrameType.DARK)
    await camera.set_cooler(True, 3.0)
    await trio.sleep(3600.0)
    cold = await camera.capture(30_000, frame_type=FrameType.DARK)
    assert warm.temperature_c == 15.0
    assert cold.temperature_c == pytest.approx(3.0, abs=0.01)
    # 0.5 ADU/s at 15 °C, two halvings at 3 °C: 15 ADU versus 3.75 ADU of dark signal.
    warm_signal = float(np.median(warm.data)) - 500
    cold_signal = float(np.median(cold.data)) - 500
    assert warm_signal == pytest.approx(15.0, abs=1.0)
    assert cold_signal == pytest.approx(3.75, abs=1.0)


# ---------------------------------------------------------------------------------- rendering


def record_render_threads(camera: SimulatorCamera) -> list[int]:
    """Wrap the camera's renderer so the test sees which thread each frame was rendered on."""
    threads: list[int] = []
    render = camera.sensor.render

    def spy(*args: object, **kwargs: object) -> np.ndarray:
        threads.append(threading.get_ident())
        return render(*args, **kwargs)  # type: ignore[arg-type]

    camera.sensor.render = spy  # type: ignore[method-assign]
    return threads


async def test_frames_render_in_a_worker_thread_on_a_real_clock() -> None:
    camera = await connected_camera(time_scale=0.0)
    threads = record_render_threads(camera)
    frame = await camera.capture(1000, frame_type=FrameType.DARK)
    assert frame.data.shape == (240, 320)
    assert threads
    assert threads[0] != threading.get_ident()


async def test_virtual_time_stays_exact_under_an_outer_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A worker thread's real run time would let the autojumping clock leap to this deadline.
    camera = await connected_camera(time_scale=1.0)
    threads = record_render_threads(camera)
    start = trio.current_time()
    with trio.fail_after(100.0):
        for _ in range(3):
            await camera.capture(2000, frame_type=FrameType.DARK)
    assert trio.current_time() - start == 6.0
    assert threads == [threading.get_ident()] * 3


async def test_render_in_thread_can_be_forced(autojump_clock: trio.testing.MockClock) -> None:
    camera = await connected_camera(render_in_thread=True)
    threads = record_render_threads(camera)
    await camera.capture(1000, frame_type=FrameType.DARK)
    assert threads[0] != threading.get_ident()
