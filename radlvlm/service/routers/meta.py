"""Model listing, health, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from radlvlm.errors import AuditIntegrityError
from radlvlm.service.dependencies import get_state, require
from radlvlm.service.schemas import ErrorBody, HealthOut, ModelOut, ModelsOut
from radlvlm.service.state import ServiceState

router = APIRouter(tags=["service"])


@router.get("/v1/models", response_model=ModelsOut, responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}})
def list_models(state: ServiceState = Depends(get_state), _: object = Depends(require("draft"))) -> ModelsOut:
    """The model this service runs."""
    return ModelsOut(models=[ModelOut(**state.model_info)])


@router.get("/healthz", response_model=HealthOut)
def healthz() -> HealthOut:
    """Liveness: the process answers."""
    return HealthOut(status="ok")


@router.get("/readyz", response_model=HealthOut, responses={503: {"model": HealthOut}})
def readyz(state: ServiceState = Depends(get_state)) -> HealthOut | JSONResponse:
    """Readiness: the model is loaded and warmed up, and the audit trail can take entries."""
    if state.load_failure is not None:  # the reason is in the server log: it may name the server's paths
        detail = "the model did not load; see the server log"
        return JSONResponse(HealthOut(status="failed", detail=detail).model_dump(), status_code=503)
    if not state.ready:
        return JSONResponse(HealthOut(status="starting", detail="model loading").model_dump(), status_code=503)
    try:
        state.runtime.ensure_auditable()
    except AuditIntegrityError:
        detail = "the audit trail cannot take entries; run 'radlvlm audit verify'"
        return JSONResponse(HealthOut(status="unavailable", detail=detail).model_dump(), status_code=503)
    return HealthOut(status="ok")


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(state: ServiceState = Depends(get_state)) -> Response:
    """Prometheus metrics (request counts and latency by endpoint, engine queue and batching)."""
    engine = state.engine.stats() if state.ready else {}  # a model still loading has no queue yet
    state.metrics.queue_depth.set(engine.get("queue_depth", 0))
    state.metrics.engine_rejected.set(engine.get("rejected", 0))
    state.metrics.engine_batches.set(engine.get("batches", 0))
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
