"""What every request handler reaches through ``request.app.state.api``: settings and clients."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from fastapi import Request

from skyeye.adapters import postgres
from skyeye.adapters import serve as serve_adapter
from skyeye.adapters.postgres import Engine
from skyeye.adapters.s3 import ObjectStore
from skyeye.settings import Settings


@dataclass
class ApiState:
    """The API process's settings, catalog engine, object store and (lazily) the Serve app.

    The Serve handle is made on first use: joining the Ray cluster takes a second or two, and
    reads never need it.
    """

    settings: Settings
    engine: Engine
    store: ObjectStore
    _app: serve_adapter.AppHandle | None = None
    _app_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, settings: Settings) -> ApiState:
        """Clients for ``settings``, whose endpoints are resolved (none is left unset)."""
        if settings.database_url is None:
            raise ValueError("database_url is unset; resolve the settings against a stack")
        return cls(settings, postgres.create_engine(settings.database_url), ObjectStore(settings))

    def serve_app(self) -> serve_adapter.AppHandle:
        """The inference application's handle (joins the Ray cluster the first time)."""
        with self._app_lock:
            if self._app is None:
                self._app = serve_adapter.handle(self.settings)
            return self._app

    def close(self) -> None:
        """Release the catalog's connections, and leave the Ray cluster if a request joined it."""
        self.engine.dispose()
        with self._app_lock:
            if self._app is not None:
                self._app = None
                serve_adapter.disconnect()


def api_state(request: Request) -> ApiState:
    """The application's :class:`ApiState`, as a FastAPI dependency."""
    state: ApiState = request.app.state.api
    return state
