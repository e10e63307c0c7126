"""A simulated camera controller that speaks the protocol of reference/controller.md exactly.

It listens on a command port and a status port (one TCP connection per command) and, when
asked, on a serial line: a new pty pair (``serial="pty"``; the slave's path is reported), an
already open tty file descriptor (tests pass the master of ``os.openpty()``), a device path, or
``socket://host:port`` to accept line connections on (what pyserial's ``socket://`` URL
connects to). Commands on a line are answered strictly in order, one line each, while being
carried out concurrently, so ``clear`` can stop an exposure whose reply is still owed.

It keeps the 19 state keys as 4-bit strings (IDLE, then EXPOSING, READING, FETCHING, FLUSHING
on ``clear``), answers every command with ``[DONE {status dict}]`` (adding ``width`` and
``height``, phdserver's extension), and writes each exposure as a FITS file named
``{fileroot}.fits`` in its image directory, rendered by the simulator's
:class:`~phdserver.cameras.sensor_model.SensorModel`. Like a real controller it writes the file
in place and finishes it after replying (header and half the data, a pause, the rest), so
clients must wait for a complete file.

Faults (``fault``, on the command named by ``fault_command``, ``expose`` by default; tests may
change both on the running :class:`SimController`): ``silent`` never answers, ``error`` answers
``[ERROR ...]``, ``cmd_error`` a DONE dict with ``'cmd_error': True``, ``malformed`` a dict
``ast.literal_eval`` cannot read, ``drop`` carries the command out and closes the connection
half-way through the reply, ``noimage`` carries out an exposure but writes no file.
"""

from __future__ import annotations

import collections
import enum
import io
import re
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import structlog
import trio
from astropy.io import fits

from phdserver.cameras.base import FrameType
from phdserver.cameras.controller._protocol import (
    ALL_POSITIVE,
    COMMAND_PORT,
    EXPOSE_MODES,
    MAX_REPLY_BYTES,
    STATE_NAMES,
    STATUS_PORT,
    ParsedCommand,
    bit_string,
    done_reply,
    error_reply,
    parse_command,
)
from phdserver.cameras.controller._sim_serial import serve_serial
from phdserver.cameras.sensor_model import SensorConfig, SensorModel

__all__ = ["FAULTS", "Fault", "SimController", "SimControllerSettings", "serve_sim_controller"]

_KEYWORD_RE = re.compile(r"[A-Z0-9_-]{1,8}")
_FILEROOT_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_BARE_COMMAND_IDLE_S = 0.05
"""A command sent without a terminator (as the LS4 C client does) ends after this silence."""


class Fault(enum.Enum):
    SILENT = "silent"
    ERROR = "error"
    CMD_ERROR = "cmd_error"
    MALFORMED = "malformed"
    DROP = "drop"
    NOIMAGE = "noimage"


FAULTS = tuple(f.value for f in Fault)


@dataclass(frozen=True, slots=True, kw_only=True)
class SimControllerSettings:
    """The simulated controller. Ports 0 pick free ports (see :class:`SimController`)."""

    image_dir: str
    host: str = "127.0.0.1"
    port: int = COMMAND_PORT
    status_port: int = STATUS_PORT
    serial: str | None = None
    """``"pty"``, a tty device path, or ``socket://host:port`` to listen on."""
    serial_fd: int | None = None
    """An open tty file descriptor to serve (it is duplicated, the caller keeps its own)."""
    baudrate: int = 115200
    sensor: SensorConfig = field(default_factory=SensorConfig)
    time_scale: float = 1.0
    """Exposures, readout, clearing and image writing take this times their duration."""
    readout_s: float = 1.0
    clear_s: float = 0.2
    image_write_s: float = 0.2
    """The pause between the first and second half of an image file."""
    temperature_c: float = 15.0
    report_size: bool = True
    fault: Fault | None = None
    fault_command: str = "expose"

    def __post_init__(self) -> None:
        if not self.time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {self.time_scale}")
        if min(self.readout_s, self.clear_s, self.image_write_s) < 0:
            raise ValueError("readout_s, clear_s and image_write_s must be >= 0")


@dataclass(slots=True)
class Answer:
    reply: bytes | None
    """None: stay silent."""
    drop: bool = False


class SimController:
    """The running controller: its state, and what tests may look at or change.

    ``fault``/``fault_command`` can be changed at any time, and ``error_state`` (a reason, or
    None) puts the controller in its error state; ``commands`` holds the last 1000
    command lines received (oldest first); ``port``, ``status_port`` and ``serial_path`` are
    where it listens.
    """

    def __init__(self, settings: SimControllerSettings, nursery: trio.Nursery) -> None:
        self.settings = settings
        self.sensor = SensorModel(settings.sensor)
        self.fault = settings.fault
        self.fault_command = settings.fault_command
        self.error_state: str | None = None
        self.commands: collections.deque[str] = collections.deque(maxlen=1000)
        self.port = 0
        self.status_port = 0
        self.serial_path: str | None = None
        self.images: list[Path] = []
        self._nursery = nursery
        self._log = structlog.get_logger("phdserver.sim_controller")
        self._masks: dict[str, int] = {"IDLE": ALL_POSITIVE, "POWERON": ALL_POSITIVE}
        self._state, self._comment = "idle", "ready"
        self._changed = trio.Event()
        self._headers: dict[str, str] = {}
        self._exposing: trio.CancelScope | None = None
        self._frames = 0

    # -- state --------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """``idle``, ``exposing``, ``reading``, ``fetching`` or ``clearing``."""
        return self._state

    async def wait_state(self, state: str) -> None:
        """Return once the controller is in ``state`` (tests wait for "exposing")."""
        while self._state != state:
            await self._changed.wait()

    def _set(self, state: str, *active: str) -> None:
        self._changed.set()
        self._changed = trio.Event()
        self._state = self._comment = state
        self._masks = {"POWERON": ALL_POSITIVE}
        for name in active or ("IDLE",):
            self._masks[name] = ALL_POSITIVE
        if active:
            self._masks["ACTIVE"] = ALL_POSITIVE

    def status_fields(self, command: ParsedCommand | None = None, *, reply: str = "",
                      cmd_error: str | None = None) -> dict[str, object]:
        now = time.time()
        date = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 100):02d}"
        error = self.error_state
        fields: dict[str, object] = {
            "ready": self._exposing is None and error is None, "state": self._state,
            "error": error is not None, "comment": self._comment if error is None else error,
            "date": date,
        }
        for name in STATE_NAMES:
            fields[name] = bit_string(self._masks.get(name, 0))
        if error is not None:
            fields["ERROR"] = fields["ERRORED"] = bit_string(ALL_POSITIVE)
        fields.update({
            "cmd_error": cmd_error is not None,
            "cmd_error_msg": cmd_error if cmd_error is not None else "False",
            "cmd_command": command.verb if command else "",
            "cmd_arg_value_list": command.rest if command else "",
            "cmd_reply": reply,
        })
        if self.settings.report_size:
            fields["width"] = self.settings.sensor.width
            fields["height"] = self.settings.sensor.height
        return fields

    def _done(self, command: ParsedCommand, reply: str = "") -> Answer:
        return Answer(done_reply(self.status_fields(command, reply=reply)))

    def _refuse(self, command: ParsedCommand, message: str) -> Answer:
        return Answer(done_reply(self.status_fields(command, cmd_error=message)))

    # -- commands -----------------------------------------------------------------------------
    async def answer(self, line: str, *, status_only: bool = False) -> Answer:
        """Carry out one command line and return its reply."""
        command = parse_command(line)
        if command is None:
            return Answer(error_reply("empty command"))
        self.commands.append(line.strip())
        fault = self.fault if command.verb == self.fault_command else None
        if fault is Fault.SILENT:
            return Answer(None)
        if fault is Fault.ERROR:
            return Answer(error_reply(f"simulated fault: {command.verb} failed"))
        if fault is Fault.CMD_ERROR:
            return self._refuse(command, f"simulated fault: {command.verb} failed")
        if fault is Fault.MALFORMED:
            return Answer(b"[DONE {'ready': True, 'EXPOSING': '0000', 'state': 'idle' ]")
        if status_only and command.verb != "status":
            return Answer(error_reply(f"the status port accepts only 'status', not "
                                       f"'{command.verb}'"))
        answer = await self._dispatch(command, write_image=fault is not Fault.NOIMAGE)
        if fault is Fault.DROP and answer.reply is not None:
            answer.drop = True
        return answer

    async def _dispatch(self, command: ParsedCommand, *, write_image: bool) -> Answer:
        verb = command.verb
        if verb == "status":
            return self._done(command)
        if verb == "header":
            key, _, value = command.rest.partition(" ")
            if not _KEYWORD_RE.fullmatch(key) or not value.strip():
                return self._refuse(command, f"bad header command {command.rest!r}")
            self._headers[key] = value.strip()
            return self._done(command)
        if verb == "expose":
            return await self._expose(command, write_image)
        if verb == "clear":
            return await self._clear(command)
        if verb in ("open_shutter", "close_shutter"):
            return self._done(command)
        if verb in ("shutdown", "reboot", "restart"):
            if self._exposing is not None:
                self._exposing.cancel()
            return self._done(command)
        return Answer(error_reply(f"unknown command '{verb}'"))

    async def _expose(self, command: ParsedCommand, write_image: bool) -> Answer:
        args = command.args
        if len(args) != 4 or args[0] not in ("True", "False") or args[3] not in EXPOSE_MODES:
            return self._refuse(command, "usage: expose <True|False> <seconds> <fileroot> <mode>")
        try:
            exposure_s = float(args[1])
        except ValueError:
            exposure_s = -1.0
        if not 0 <= exposure_s < 1e6 or not _FILEROOT_RE.fullmatch(args[2]):
            return self._refuse(command, f"bad exposure time or fileroot in {command.rest!r}")
        if self._exposing is not None:
            return self._refuse(command, "an exposure is in progress")
        s = self.settings
        headers, self._headers = self._headers, {}
        frame_type = _frame_type(args[0] == "True", exposure_s, headers.get("IMAGETYP", ""))
        with trio.CancelScope() as scope:
            self._exposing = scope
            try:
                self._set("exposing", "EXPOSING")
                await trio.sleep(exposure_s * s.time_scale)
                self._set("reading", "READING")
                await trio.sleep(s.readout_s * s.time_scale)
                self._set("fetching", "FETCHING")
                index, self._frames = self._frames, self._frames + 1

                def render() -> bytes:
                    data = self.sensor.render(exposure_s, frame_type, s.temperature_c, index)
                    return _fits_bytes(data, exposure_s, args[0] == "True", headers,
                                       s.temperature_c)

                image = await trio.to_thread.run_sync(render)
            finally:
                self._exposing = None
                if self._state != "clearing":
                    self._set("idle")
        if scope.cancelled_caught:
            return Answer(error_reply(f"exposure {args[2]} aborted by clear"))
        if write_image:
            path = Path(s.image_dir) / f"{args[2]}.fits"
            self._nursery.start_soon(self._write_image, path, image)
        return self._done(command, reply=args[2])

    async def _write_image(self, path: Path, image: bytes) -> None:
        """In place, in two halves with a pause between, as a controller writing a file would."""
        half = len(image) // 2

        def write(chunk: bytes, mode: str) -> None:
            with open(path, mode) as f:
                f.write(chunk)

        try:
            await trio.to_thread.run_sync(write, image[:half], "wb")
            await trio.sleep(self.settings.image_write_s * self.settings.time_scale)
            await trio.to_thread.run_sync(write, image[half:], "ab")
        except OSError as exc:
            self._log.warning("cannot write image", path=str(path), error=str(exc))
            return
        self.images.append(path)

    async def _clear(self, command: ParsedCommand) -> Answer:
        if self._exposing is not None:
            self._exposing.cancel()
        self._set("clearing", "FLUSHING")
        try:
            await trio.sleep(self.settings.clear_s * self.settings.time_scale)
        finally:
            self._set("idle")
        return self._done(command)

    # -- TCP ----------------------------------------------------------------------------------
    async def serve_tcp(self, stream: trio.SocketStream, *, status_only: bool) -> None:
        """One connection, one command, one reply."""
        try:
            async with stream:
                line = await _read_command(stream)
                if line is None:
                    return
                answer = await self.answer(line, status_only=status_only)
                if answer.reply is None:  # silent: hold the connection until the client leaves
                    while await stream.receive_some(4096):
                        pass
                elif answer.drop:
                    await stream.send_all(answer.reply[: len(answer.reply) // 2])
                else:
                    await stream.send_all(answer.reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


def _frame_type(shutter_open: bool, exposure_s: float, imagetyp: str) -> FrameType:
    kind = imagetyp.strip("'\" ").lower()
    if shutter_open:
        return FrameType.FLAT if kind.startswith("flat") else FrameType.LIGHT
    return FrameType.BIAS if exposure_s == 0 or kind == "bias" else FrameType.DARK


def _header_value(text: str) -> str | int | float | bool:
    text = text.strip()
    if text in ("T", "True"):
        return True
    if text in ("F", "False"):
        return False
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip("'\"")


def _fits_bytes(data: np.ndarray, exposure_s: float, shutter_open: bool,
                headers: dict[str, str], temperature_c: float) -> bytes:
    hdu = fits.PrimaryHDU(data=data)
    h = hdu.header
    for key, text in headers.items():
        try:
            h[key] = _header_value(text)
        except (ValueError, TypeError):
            continue  # a value astropy refuses stays out; the exposure goes on
    h["EXPTIME"] = (exposure_s, "exposure time in seconds")
    h["SHUTTER"] = ("open" if shutter_open else "closed", "shutter during the exposure")
    h["CCD-TEMP"] = (temperature_c, "sensor temperature, C")
    h["INSTRUME"] = ("phdserver sim-controller", "simulated camera controller")
    h["DATE-OBS"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    out = io.BytesIO()
    fits.HDUList([hdu]).writeto(out)
    return out.getvalue()


async def _read_command(stream: trio.SocketStream) -> str | None:
    """A command ends at ``\\n``, a NUL, end of file, or a short silence after some bytes."""
    buffer = bytearray()
    with trio.move_on_after(60):
        while len(buffer) <= MAX_REPLY_BYTES:
            timeout = _BARE_COMMAND_IDLE_S if buffer else 30
            with trio.move_on_after(timeout) as idle:
                chunk = await stream.receive_some(4096)
            if idle.cancelled_caught or not chunk:
                break
            buffer += chunk
            if b"\n" in buffer or b"\x00" in buffer:
                break
    text = bytes(buffer).split(b"\n")[0].split(b"\x00")[0].decode("ascii", errors="replace")
    return text if text.strip() else None


async def serve_sim_controller(
    settings: SimControllerSettings,
    *,
    task_status: trio.TaskStatus[SimController] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the simulated controller until cancelled; reports the :class:`SimController`."""
    await trio.to_thread.run_sync(partial(Path(settings.image_dir).mkdir, parents=True,
                                          exist_ok=True))
    async with trio.open_nursery() as nursery:
        controller = SimController(settings, nursery)
        for status_only in (False, True):
            listeners = await trio.open_tcp_listeners(
                settings.status_port if status_only else settings.port, host=settings.host)
            bound = listeners[0].socket.getsockname()[1]
            if status_only:
                controller.status_port = bound
            else:
                controller.port = bound
            handler = partial(controller.serve_tcp, status_only=status_only)
            nursery.start_soon(trio.serve_listeners, handler, listeners)
        if settings.serial is not None or settings.serial_fd is not None:
            await nursery.start(serve_serial, controller, settings)
        task_status.started(controller)
