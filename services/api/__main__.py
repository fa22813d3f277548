"""``python -m skyeye.services.api``: serve the results API with uvicorn (``skyeye api`` too)."""

from __future__ import annotations

import uvicorn

from .._runtime import service_settings
from .app import create_app


def main() -> None:
    """Serve on ``settings.api.host:port`` until stopped (SIGTERM, Ctrl-C)."""
    settings = service_settings("skyeye-api")
    uvicorn.run(
        create_app(settings),
        host=settings.api.host,
        port=settings.api.port,
        log_level="info",
        # the supervisor (or Kubernetes) restarts the process; uvicorn's own workers would
        # hide which process owns the port
        workers=1,
        proxy_headers=True,
    )


if __name__ == "__main__":
    main()
