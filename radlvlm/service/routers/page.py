"""GET /: a small page for radiologists (upload, image, draft, error check with highlighted spans);
POST /v1/render: the de-identified image as PNG for that page (browsers cannot show DICOM)."""

from __future__ import annotations

import io
from importlib import resources
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import HTMLResponse, Response
from PIL import Image as PILImage
from starlette.concurrency import run_in_threadpool

from radlvlm.pipeline.ingest import deidentified_image
from radlvlm.service.dependencies import get_state, one_part_each, require
from radlvlm.service.schemas import ErrorBody
from radlvlm.service.security import Principal
from radlvlm.service.state import ServiceState

router = APIRouter(tags=["page"])
PREVIEW_SIDE = 1024


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def index() -> HTMLResponse:
    return HTMLResponse(resources.files("radlvlm.service").joinpath("static/index.html").read_text())


@router.post(
    "/v1/render",
    dependencies=[Depends(one_part_each)],
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}},
        **{c: {"model": ErrorBody} for c in (401, 403, 413, 415, 422, 429)},
    },
)
async def render(
    file: Annotated[UploadFile, File(description="DICOM, PNG or JPEG")],
    view: Annotated[Literal["PA", "AP"] | None, Form()] = None,
    _: Principal = Depends(require("draft")),
    state: ServiceState = Depends(get_state),
) -> Response:
    """The uploaded image after de-identification and the display pipeline, as an 8-bit PNG (<= 1024 px)."""
    data = await file.read()
    image = await run_in_threadpool(deidentified_image, data, state.runtime.deidentifier(), view=view)
    pixels = (image.pixels.clamp(0, 1).numpy() * 255).astype(np.uint8)
    picture = PILImage.fromarray(pixels)
    picture.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return Response(buffer.getvalue(), media_type="image/png")
