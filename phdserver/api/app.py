"""App, profile and equipment methods: the first things every client calls."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import orjson
import trio

from phdserver.errors import InvalidParams, Refused
from phdserver.library.atomic import atomic_write_bytes

from ._params import Param
from ._registry import rpc_method

if TYPE_CHECKING:
    from phdserver.app import App

__all__ = ["AppMethods"]


class AppMethods:
    def __init__(self, app: App) -> None:
        self._app = app

    @rpc_method("get_app_state")
    def get_app_state(self) -> str:
        """PHD2's state name: Stopped or Looping (phdserver does not guide)."""
        return self._app.state

    @rpc_method("get_connected")
    def get_connected(self) -> bool:
        """Whether the profile's camera is connected."""
        return self._app.equipment.connected

    @rpc_method("set_connected", Param(name="connected", type="boolean"))
    async def set_connected(self, connected: bool) -> int:
        """Connect or disconnect the profile's camera."""
        if connected:
            await self._app.connect()
        else:
            await self._app.disconnect()
        return 0

    @rpc_method("get_profiles")
    def get_profiles(self) -> list[dict[str, Any]]:
        """All equipment profiles; the selected one carries ``"selected": true``."""
        current = self._app.profile.id
        out: list[dict[str, Any]] = []
        for profile in self._app.profiles:
            entry: dict[str, Any] = {"id": profile.id, "name": profile.name}
            if profile.id == current:
                entry["selected"] = True
            out.append(entry)
        return out

    @rpc_method("get_profile")
    def get_profile(self) -> dict[str, Any]:
        """The selected profile's id and name."""
        profile = self._app.profile
        return {"id": profile.id, "name": profile.name}

    @rpc_method("set_profile", Param(name="id", type="integer", attr="profile_id"))
    def set_profile(self, profile_id: int) -> int:
        """Select another profile (only while disconnected, as in PHD2)."""
        if profile_id not in {p.id for p in self._app.profiles}:
            known = ", ".join(str(p.id) for p in self._app.profiles)
            raise InvalidParams(f"invalid id: no profile {profile_id} (profiles: {known})",
                                param="id")
        if profile_id != self._app.profile.id:
            self._app.select_profile(profile_id)
        return 0

    @rpc_method("get_current_equipment")
    def get_current_equipment(self) -> dict[str, Any]:
        """The devices of the profile (only those that exist: a camera, no mount)."""
        equipment = self._app.equipment
        return {"camera": {"name": equipment.camera_name, "connected": equipment.connected}}

    @rpc_method("shutdown")
    def shutdown(self) -> int:
        """Stop the daemon (after the reply has been sent)."""
        self._app.shutdown_requested.set()
        return 0

    @rpc_method("export_config_settings")
    async def export_config_settings(self) -> dict[str, str]:
        """Write the running configuration to a JSON file in the data directory."""
        app = self._app
        stamp = dt.datetime.now().strftime("%Y%m%d_%H%M%S")
        path = app.data_dir / f"phdserver_settings_{stamp}.json"
        document = {
            "creator": app.creator,
            "server": {
                "listen": app.config.server.listen,
                "port": app.config.server.effective_port,
                "instance": app.instance,
            },
            "data_dir": str(app.data_dir),
            "selected_profile": app.profile.id,
            "profiles": [_profile_json(p) for p in app.profiles],
        }
        data = orjson.dumps(document, option=orjson.OPT_INDENT_2)
        try:
            await trio.to_thread.run_sync(atomic_write_bytes, path, data)
        except OSError as exc:
            raise Refused(f"export settings failed: {exc}") from None
        return {"filename": str(path)}


def _profile_json(profile: Any) -> dict[str, Any]:
    return {
        "id": profile.id,
        "name": profile.name,
        "camera": {"type": profile.camera.type, **dict(profile.camera.options)},
        "focal_length_mm": profile.focal_length_mm,
        "exposure_ms": profile.exposure_ms,
        "custom_exposure_ms": profile.custom_exposure_ms,
        "gain": profile.gain,
        "binning": profile.binning,
    }
