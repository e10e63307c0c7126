"""Replays of what real clients do (reference/clients.md, ekos-transcript.md) over real TCP.

Each session asserts the compatibility bar: no error reply except refused guiding actions, no
hang (every wait has a timeout), no dropped connection, no null in any event, every line CRLF.
"""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from phdserver.config import ServerSettings
from tests.support import LineClient, make_config, running_server

GUIDING_REFUSALS = {"guide", "dither", "set_paused", "find_star", "get_star_image"}


def assert_clean_event(event: dict[str, Any]) -> None:
    assert list(event)[:4] == ["Event", "Timestamp", "Host", "Inst"]
    assert "jsonrpc" not in event
    for key, value in event.items():
        assert value is not None, f"null {key} in {event}"


def check_lines(lines: list[bytes]) -> None:
    for line in lines:
        assert line.endswith(b"\r\n"), line
        assert line.strip(), "blank line"
        message = orjson.loads(line)
        if isinstance(message, dict) and "Event" in message:
            assert_clean_event(message)


class NinaCall:
    """N.I.N.A.'s SendMessage: a new connection per call, a GUID string id, no jsonrpc."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lines: list[bytes] = []

    async def __call__(self, method: str, params: Any = None) -> dict[str, Any]:
        client = await LineClient.connect(self.port, read_greeting=False)
        guid = str(uuid.uuid4())
        request: dict[str, Any] = {"id": guid, "method": method}
        if params is not None:
            request["params"] = params
        await client.send_raw(orjson.dumps(request) + b"\r\n")
        with trio.fail_after(10):
            while True:
                message = await client.read_message()
                if isinstance(message, dict) and str(message.get("id")) == guid:
                    break
        self.lines.extend(client.raw_lines)
        await client.aclose()
        return message


async def test_nina_session(tmp_path: Path) -> None:
    async with running_server(make_config(tmp_path)) as (_, port):
        listener = await LineClient.connect(port)  # never writes
        call = NinaCall(port)
        errors: list[tuple[str, dict]] = []

        async def ok(method: str, params: Any = None) -> Any:
            reply = await call(method, params)
            if "error" in reply:
                errors.append((method, reply["error"]))
                return None
            return reply["result"]

        profile = await ok("get_profile")
        assert profile == {"id": 1, "name": "Simulator"}
        profiles = await ok("get_profiles")
        assert profiles == [{"id": 1, "name": "Simulator", "selected": True}]
        assert await ok("get_connected") is False
        assert await ok("set_connected", [True]) == 0
        assert await ok("get_connected") is True
        shift = await ok("get_lock_shift_params")
        assert shift["enabled"] is False
        assert isinstance(await ok("get_pixel_scale"), float)
        await ok("set_lock_shift_params", {"rate": [1.5, -2.0], "units": "arcsec/hr",
                                           "axes": "RA/Dec"})
        await ok("set_lock_shift_enabled", [True])
        assert (await ok("get_lock_shift_params"))["rate"] == [1.5, -2.0]
        await ok("set_lock_shift_enabled", [False])
        # AutoSelectGuideStar, then StartGuiding as NINA would try it.
        assert await ok("get_app_state") == "Stopped"
        assert await ok("loop") == 0
        await listener.wait_event("LoopingExposures")
        assert await ok("get_app_state") == "Looping"
        assert isinstance(await ok("get_exposure"), int)
        size = await ok("get_camera_frame_size")
        assert size == [320, 240]
        await ok("find_star", {"roi": [0, 0, 100, 100]})
        assert await ok("get_calibrated") is False
        await ok("guide", {"settle": {"pixels": 1.5, "time": 10, "timeout": 40},
                           "recalibrate": False})
        assert await ok("get_lock_position") is None
        assert await ok("clear_calibration", ["Both"]) == 0
        # StopGuiding: stop_capture, then poll until Stopped.
        assert await ok("stop_capture") == 0
        await listener.wait_event("LoopingExposuresStopped")
        assert await ok("get_app_state") == "Stopped"
        assert await ok("get_star_image") is None
        await listener.aclose()

    assert {method for method, _ in errors} <= GUIDING_REFUSALS, errors
    assert all(e["code"] in (1, 2) for _, e in errors)
    check_lines(call.lines + listener.raw_lines)


async def test_ekos_session(tmp_path: Path) -> None:
    """One connection, integer ids, jsonrpc member, one request in flight, 3 s polls."""
    async with running_server(make_config(tmp_path)) as (_, port):
        client = await LineClient.connect(port, read_greeting=False)
        version = await client.read_message()
        assert version["Event"] == "Version"
        state = await client.read_message()
        assert state["Event"] == "AppState"
        next_id = 1

        async def call(method: str, params: list | None = None) -> Any:
            nonlocal next_id
            request: dict[str, Any] = {"id": next_id, "jsonrpc": "2.0", "method": method}
            if params is not None:
                request["params"] = params
            await client.send_raw(orjson.dumps(request) + b"\r\n")
            reply = await client.reply(next_id, timeout=10)
            next_id += 1
            assert "error" not in reply, (method, reply)
            assert "result" in reply
            return reply["result"]

        assert await call("set_connected", [True]) == 0
        assert await call("get_connected") is True
        equipment = await call("get_current_equipment")
        assert equipment["camera"] == {"name": "Simulator", "connected": True}
        assert await call("get_pixel_scale") == pytest.approx(0.773494)
        assert await call("get_exposure") == 1000
        assert await call("get_dec_guide_mode") == "Auto"
        durations = await call("get_exposure_durations")
        assert durations[1:3] == [20, 50]
        await call("get_current_equipment")
        for _ in range(3):
            assert await call("get_connected") is True
            assert await call("get_app_state") == "Stopped"
        assert await call("loop") == 0
        await client.wait_event("LoopingExposures")
        assert await call("get_app_state") == "Looping"
        assert await call("stop_capture") == 0
        await client.wait_event("LoopingExposuresStopped")
        assert await call("set_exposure", [2000]) == 0
        assert await call("get_exposure") == 2000
        assert await call("set_dec_guide_mode", ["North"]) == 0
        assert await call("get_dec_guide_mode") == "North"
        assert await call("capture_single_frame") == 0
        done = await client.wait_event("SingleFrameComplete")
        assert done["Success"] is True
        await client.wait_event("LoopingExposuresStopped")
        assert await call("get_app_state") == "Stopped"
        await client.aclose()
    check_lines(client.raw_lines)


def free_instance() -> tuple[int, int]:
    """An instance number whose PHD2 port (4400 + instance - 1) is free right now."""
    for port in range(24400, 30000, 37):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port - 4399, port
    raise RuntimeError("no free port")


async def test_phd2client_package(tmp_path: Path) -> None:
    # Installed by `make test` (see the Makefile); a missing package fails, never skips.
    from phd2client import guider as guider_module

    instance, port = free_instance()
    config = make_config(tmp_path)
    config = type(config)(
        server=ServerSettings(listen="127.0.0.1", port=port, instance=instance),
        profiles=config.profiles, data_dir=config.data_dir, log_level="warning")
    async with running_server(config):

        def session() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            with guider_module.Guider("127.0.0.1", instance) as guider:
                guider.Connect()
                seen["profiles"] = guider.GetEquipmentProfiles()
                guider.ConnectEquipment("Simulator")
                seen["exposure"] = guider.GetExposure()
                seen["scale"] = guider.PixelScale()
                guider.Loop(timeoutSeconds=10)
                seen["looping"] = guider.GetStatus()[0]
                guider.StopCapture(timeoutSeconds=10)
                seen["stopped"] = guider.GetStatus()[0]
                guider.CaptureSingleFrame(exposure=500)
                deadline = time.monotonic() + 10
                result = None
                while result is None and time.monotonic() < deadline:
                    result = guider.CheckSingleFrame()
                    if result is None:
                        time.sleep(0.05)
                seen["single_frame"] = result
                seen["saved"] = guider.SaveImage()
                try:
                    guider.Guide(1.5, 10, 40)
                except guider_module.GuiderError as exc:
                    seen["guide_error"] = str(exc)
                guider.DisconnectEquipment()
                seen["version"] = guider.Version
                guider.Disconnect()
            return seen

        with trio.fail_after(60):
            seen = await trio.to_thread.run_sync(session)
    assert seen["profiles"] == ["Simulator"]
    assert seen["exposure"] == 1000
    assert seen["scale"] == pytest.approx(0.773494)
    assert seen["looping"] == "Looping"
    assert seen["stopped"] == "Stopped"
    assert seen["single_frame"].success is True
    assert Path(seen["saved"]).is_file()  # noqa: ASYNC240 - after the session, in the test
    assert "mount" in seen["guide_error"]
    assert seen["version"] == "2.6.13"
