"""INDI cameras: a trio-native INDI client and a :class:`~phdserver.cameras.base.Camera` on it.

Start the camera's background task before connecting (see :mod:`.camera`)::

    camera = IndiCamera(IndiSettings(device="CCD Simulator"), on_alert=alert)
    await nursery.start(camera.run)
    await camera.connect()
"""

from phdserver.cameras.indi._client import IndiClient, IndiTimeout, LinkDown, LinkUp, Property
from phdserver.cameras.indi._xml import IndiProtocolError
from phdserver.cameras.indi.camera import IndiCamera, IndiSettings

__all__ = [
    "IndiCamera",
    "IndiClient",
    "IndiProtocolError",
    "IndiSettings",
    "IndiTimeout",
    "LinkDown",
    "LinkUp",
    "Property",
]
