"""The results API: search, OGC API Features, STAC API, asset detail and asks, over FastAPI.

``python -m skyeye.services.api`` (or ``skyeye api``) serves :func:`create_app` with uvicorn;
``skyeye up`` supervises it as the component ``api``. Every query is the catalog's own code
(:mod:`skyeye.catalog.search`), the same that ``skyeye search`` calls.
"""

from .app import create_app

__all__ = ["create_app"]
