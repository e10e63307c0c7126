"""The errors that domain code raises, each carrying the JSON-RPC code a client sees.

Only ``rpc/_dispatch.py`` turns these into JSON-RPC error objects. Every other layer raises them
and lets them propagate. Each type says whose fault the failure is:

* :class:`InvalidParams` - the client sent a value we cannot use (-32602, names the parameter);
* :class:`Refused` - the request is valid but the server cannot do it now (PHD2's code 1, or the
  2 and 3 PHD2 uses for a few methods);
* :class:`CameraError` - the camera failed (a driver, a connection, a timeout);
* :class:`LibraryError` - a calibration file is missing, corrupt or does not fit the camera.

Any other exception escaping a handler is a bug: dispatch logs it with its traceback and replies
-32603, and the connection lives on.
"""

from __future__ import annotations

__all__ = [
    "CameraError",
    "InvalidParams",
    "LibraryError",
    "PhdError",
    "Refused",
    "find_os_error",
]

INVALID_PARAMS = -32602
REFUSED = 1


class PhdError(Exception):
    """Base of all errors that map to a JSON-RPC error object."""

    code: int = REFUSED

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidParams(PhdError):
    """A parameter has the wrong type or value. The message names it and what is allowed."""

    code = INVALID_PARAMS

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class Refused(PhdError):
    """The request is well formed but cannot be carried out now (camera busy, not connected...)."""

    code = REFUSED


class CameraError(PhdError):
    """The camera or its connection failed; the message names the camera and what happened."""

    code = REFUSED


class LibraryError(PhdError):
    """A calibration file could not be read, written or used."""

    code = REFUSED


def find_os_error(exc: BaseException) -> OSError | None:
    """The OSError (address in use, no such device...) in ``exc`` or in its exception groups.

    Startup failures reach ``trio.run``'s caller wrapped in groups; the command line reports
    the OSError itself rather than a traceback.
    """
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_os_error(inner)
            if found is not None:
                return found
    return None
