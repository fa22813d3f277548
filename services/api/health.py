"""Probes and metrics for an orchestrator: ``/healthz``, ``/readyz``, ``/metrics``.

Unauthenticated (a kubelet and a Prometheus scraper carry no token) and left out of the OpenAPI
document: they say nothing about the catalog's content. ``/healthz``: the process answers.
``/readyz``: the catalog's database answers too. ``/metrics``: this process's metrics in the
Prometheus text format (:mod:`skyeye.telemetry.metrics`).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from skyeye.adapters import postgres
from skyeye.telemetry import metrics

from .features import State

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
def healthz() -> JSONResponse:
    """The process is up and serving requests."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
def readyz(state: State) -> JSONResponse:
    """Ready when the catalog's database answers; 503 with the reason otherwise."""
    try:
        postgres.probe(state.engine)
    except Exception as exc:  # whatever the driver raises, the probe reports it
        reason = f"database: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        return JSONResponse({"status": "unhealthy", "problems": {"database": reason}}, 503)
    return JSONResponse({"status": "ok", "problems": {}})


@router.get("/metrics")
def prometheus() -> Response:
    """This process's metrics, Prometheus text format."""
    return Response(metrics.prometheus_text(), media_type="text/plain; version=0.0.4")
