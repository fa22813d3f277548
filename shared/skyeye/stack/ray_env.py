"""Make Ray clients talk to a loopback-only head.

Ray rewrites ``127.0.0.1`` in ``ray.init(address=...)`` and ``--node-ip-address`` to the
machine's external IP unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (on Linux that switch
makes Ray treat the node as single-host and keep the loopback address). The embedded head is
started with it so it binds its gRPC servers to 127.0.0.1 only; every driver of that head needs
it too, or it dials the external IP, where nothing listens.
"""

from __future__ import annotations

import os
import sys

RAY_LOOPBACK_ENV: dict[str, str] = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def use_loopback_ray() -> None:
    """Configure this process to drive a Ray head on 127.0.0.1.

    Call before ``ray.init``. Ray reads the switch when ``ray`` is first imported, so if it is
    imported already, the module constant is flipped as well.
    """
    os.environ.update(RAY_LOOPBACK_ENV)
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        # found by name, so its attributes are unknown to the type checker: set it in its namespace
        vars(constants)["ENABLE_RAY_CLUSTER"] = False
