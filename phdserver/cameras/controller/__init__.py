"""Camera-controller cameras: the command/status protocol of reference/controller.md over TCP or
a serial line, and a simulated controller that speaks it.

No background task is needed::

    camera = ControllerCamera(ControllerSettings(host="ccd-host", image_dir="/mnt/images"))
    await camera.connect()
    frame = await camera.capture(15000, frame_type=FrameType.DARK)

The simulated controller runs in a nursery (``phdserver sim-controller`` on the command line)::

    controller = await nursery.start(serve_sim_controller, SimControllerSettings(image_dir=...))
"""

from phdserver.cameras.controller.camera import ControllerCamera, ControllerSettings
from phdserver.cameras.controller.simulated import (
    Fault,
    SimController,
    SimControllerSettings,
    add_sim_controller_arguments,
    run_sim_controller,
    serve_sim_controller,
)

__all__ = [
    "ControllerCamera",
    "ControllerSettings",
    "Fault",
    "SimController",
    "SimControllerSettings",
    "add_sim_controller_arguments",
    "run_sim_controller",
    "serve_sim_controller",
]
