"""Results API: STAC, search, ask, rules, alerts, the live feed and the dashboard, over HTTP.

Served by uvicorn on ``SKYEYE_API__HOST:SKYEYE_API__PORT``, one process (the supervisor or
Kubernetes runs more); ``skyeye api`` runs the same in the foreground.
"""

from __future__ import annotations

from types import FrameType

import uvicorn
from fastapi import FastAPI

from .._runtime import service_settings
from .app import create_app
from .events import stop_feeds

# how long open requests may run on once the server is told to stop
_GRACE_S = 10


class _Server(uvicorn.Server):
    """uvicorn's server, ending the live feeds as soon as it is told to stop.

    uvicorn waits for open responses before it stops, and a feed never ends by itself: without
    this one connected client would hold the shutdown for the whole grace time.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """End the feeds, then stop as uvicorn does."""
        stop_feeds(self._app)
        super().handle_exit(sig, frame)


def main() -> None:
    """Serve on ``settings.api.host:port`` until stopped (SIGTERM, Ctrl-C)."""
    settings = service_settings("skyeye-api")
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.api.host,
        port=settings.api.port,
        log_level="info",
        # the supervisor (or Kubernetes) restarts the process; uvicorn's own workers would
        # hide which process owns the port
        workers=1,
        proxy_headers=True,
        timeout_graceful_shutdown=_GRACE_S,
    )
    _Server(config, app).run()


if __name__ == "__main__":
    main()
