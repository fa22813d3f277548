"""Ray Serve: connecting to the cluster, deploying an application, getting its handle."""

from __future__ import annotations

import logging

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from skyeye.settings import Settings

log = logging.getLogger(__name__)


def connect(settings: Settings) -> None:
    """Join the cluster as a driver (idempotent within a process)."""
    if settings.ray_address is None:
        raise ValueError("ray_address is unset; resolve the settings against a running stack")
    if not ray.is_initialized():
        ray.init(
            address=settings.ray_address,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            logging_level=logging.WARNING,
        )


def deploy(app: serve.Application, settings: Settings) -> None:
    """Deploy (or update in place) the application and wait until it is running."""
    connect(settings)
    # Only deployment handles call the app: no HTTP proxy, nothing listening beyond loopback.
    serve.start(proxy_location="Disabled")
    serve.run(app, name=settings.serve_app, route_prefix=None, blocking=False)
    log.info("serve application %r is running", settings.serve_app)


def handle(settings: Settings) -> DeploymentHandle:
    connect(settings)
    return serve.get_app_handle(settings.serve_app)
