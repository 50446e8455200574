"""The HTTP API under /api/v1: models, predictions with Grad-CAM overlays, and its OpenAPI description.

Views only decode the request and encode the response; `service.explain` does the work.
"""

from __future__ import annotations

import base64
import re
from dataclasses import asdict

from flask import Blueprint, Response, jsonify, request

from service.auth import check_api_token
from service.card_summary import card_summary
from service.errors import ApiError
from service.explain import explain_upload
from service.predictor import ModelInfo
from service.uploads import read_upload
from training.contract.dicom import DicomInfo

bp = Blueprint("api", __name__, url_prefix="/api/v1")
EXPLAIN_CHOICES = ("gradcam", "none")


def _state():
    from service.state import state

    return state()


@bp.before_request
def _authorise() -> None:
    if request.endpoint != "api.openapi":  # the description is public, like /healthz
        check_api_token()


def model_json(info: ModelInfo, backend: str) -> dict:
    """A model as the API describes it: name, versions, state and the newest version's card."""
    card = dict(info.card)
    return {
        "name": info.name,
        "task": card.get("task"),
        "backbone": card.get("backbone"),
        "attention": bool(card.get("attention")),
        "class_names": list(card.get("class_names", [])),
        "input_size": list(card.get("input_size", [])),
        "versions": list(info.versions),
        "latest": info.latest,
        "state": info.state,
        "backend": backend,
        "summary": card_summary(card).to_json(),
        "card": card,
    }


@bp.get("/models")
def list_models():
    s = _state()
    return jsonify(models=[model_json(m, s.predictor.backend_name) for m in s.predictor.list_models()])


@bp.get("/models/<model>")
def get_model(model: str):
    s = _state()
    return jsonify(model_json(s.predictor.model_info(model), s.predictor.backend_name))


@bp.post("/models/<model>/predict")
def predict(model: str):
    s = _state()
    explain = request.args.get("explain", "gradcam")
    if explain not in EXPLAIN_CHOICES:
        raise ApiError("invalid_argument", f"expected explain in {list(EXPLAIN_CHOICES)}, got {explain!r}", 400)
    version = parse_version(request.args.get("version"))
    wants_png = request.accept_mimetypes.best_match(["application/json", "image/png"]) == "image/png"
    if wants_png and explain == "none":
        raise ApiError("not_acceptable", "Accept: image/png answers the Grad-CAM overlay; it needs explain=gradcam", 406)
    card = s.predictor.model_card(model, version)  # unknown model or version: 404 before reading the body
    data = read_upload(request)
    result = explain_upload(
        s.predictor, model, card, data, version=version, explain=explain == "gradcam", max_pixels=s.config.max_pixels,
        decode_slots=s.decode_slots,
    )
    s.metrics.predictions.labels(result.model, result.label).inc()
    for overlay in result.omitted:
        s.metrics.overlays_omitted.labels(result.model, overlay).inc()
    if wants_png:
        if result.overlay_png is None:
            raise ApiError(
                "overlay_unavailable",
                f"expected a Grad-CAM overlay to answer Accept: image/png, but {result.omitted.get('overlay')}; "
                "ask for application/json to get the prediction without it",
                502,
            )
        response = Response(result.overlay_png, mimetype="image/png")
    else:
        body = {
            "model": result.model,
            "version": result.version,
            "task": result.task,
            "label": result.label,
            "class_index": result.class_index,
            "probabilities": result.probabilities,
            "image_size": list(result.image_size),
            "overlay_size": list(result.overlay_size) if result.overlay_size else None,
            "overlay_png": _b64(result.overlay_png),
            "timings_ms": result.timings_ms,
        }
        if result.attention_png is not None:
            body["attention_png"] = _b64(result.attention_png)
        if result.omitted:
            body["overlay_omitted"] = result.omitted
        if explain == "gradcam":
            body["heatmap_grid"] = (
                {"layer": result.grid.layer, "shape": list(result.grid.values.shape), "values": result.grid.values.tolist()}
                if result.grid is not None
                else None
            )
            if result.grid_omitted is not None:
                body["heatmap_grid_omitted"] = result.grid_omitted
        if result.dicom is not None:
            body["dicom"] = dicom_json(result.dicom)
            body["display_png"] = _b64(result.display_png)
        if result.card is not None:
            body["model_summary"] = card_summary(result.card).to_json()
        response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"  # the answer describes a patient's image
    return response


# TF Serving's versions are int64; its labels are names. Anything else is the client's mistake.
_MAX_VERSION_DIGITS = 18
_LABEL = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


def parse_version(text: str | None) -> int | str | None:
    """`?version=`: None (the latest), a version number, or a version label; else a 400 saying what was expected."""
    if not text or text == "latest":
        return None
    if text.isascii() and text.isdigit() and len(text) <= _MAX_VERSION_DIGITS:
        return int(text)
    if _LABEL.fullmatch(text):
        return text
    shown = text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"
    raise ApiError(
        "invalid_version",
        f"expected version to be a number of at most {_MAX_VERSION_DIGITS} ASCII digits or a label "
        f"(a letter, then letters, digits, '_', '.' or '-', at most 64), got {shown!r}",
        400,
    )


def dicom_json(info: DicomInfo) -> dict:
    """What the answer says of a DICOM upload's header, and nothing else of it (no patient data)."""
    return {
        "modality": info.modality,
        "photometric_interpretation": info.photometric_interpretation,
        "frame": {"index": info.frame, "count": info.frames},
        "window": asdict(info.window) if info.window is not None else None,
    }


def _b64(png: bytes | None) -> str | None:
    return base64.b64encode(png).decode("ascii") if png is not None else None


@bp.get("/openapi.json")
def openapi():
    from service.openapi import openapi_document

    return jsonify(openapi_document(_state().openapi_paths))
