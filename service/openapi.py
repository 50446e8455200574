"""The OpenAPI 3.0 description of the HTTP API (served at /api/v1/openapi.json)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from training.contract.card import package_version
from training.contract.dicom import PHOTOMETRIC

_ERROR = {"$ref": "#/components/responses/Error"}
_MODEL_PARAM = {
    "name": "model", "in": "path", "required": True,
    "schema": {"type": "string"}, "description": "A served model, `<task>-<backbone>-<attention|baseline>`.",
}
_VERSION_PARAM = {
    "name": "version", "in": "query", "required": False,
    # The same rule as service.api.parse_version: anything else is answered 400 invalid_version.
    "schema": {"type": "string", "pattern": "^([0-9]{1,18}|[A-Za-z][A-Za-z0-9_.-]{0,63})$"},
    "description": "A version number (at most 18 digits) or TF Serving version label; the newest by default.",
}
_EXPLAIN_PARAM = {
    "name": "explain", "in": "query", "required": False,
    "schema": {"type": "string", "enum": ["gradcam", "none"], "default": "gradcam"},
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}


def openapi_document(extra_paths: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The document; `extra_paths` are path items extensions add (for example the audit's)."""
    errors = {str(code): _ERROR for code in (400, 401, 404, 406, 413, 415, 503, 504)}
    paths: dict[str, Any] = {
        "/healthz": {"get": {
            "summary": "The process is up", "operationId": "healthz", "security": [],
            "responses": {"200": {"description": "up", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}}},
        }},
        "/readyz": {"get": {
            "summary": "The backend answers and at least one model is AVAILABLE", "operationId": "readyz", "security": [],
            "responses": {
                "200": {"description": "ready", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}}},
                "503": {"description": "not ready: the error, and the same fields", "content": {"application/json": {"schema": {
                    "allOf": [{"$ref": "#/components/schemas/Error"}, {"$ref": "#/components/schemas/Readiness"}],
                }}}},
            },
        }},
        "/api/v1/models": {"get": {
            "summary": "Served models with their cards, versions and state", "operationId": "listModels",
            "responses": {
                "200": {"description": "the models", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["models"],
                    "properties": {"models": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}}},
                }}}},
                "401": _ERROR, "502": _ERROR, "503": _ERROR, "504": _ERROR,
            },
        }},
        "/api/v1/models/{model}": {"get": {
            "summary": "One model", "operationId": "getModel", "parameters": [_MODEL_PARAM],
            "responses": {
                "200": {"description": "the model", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Model"}}}},
                "401": _ERROR, "404": _ERROR, "502": _ERROR, "503": _ERROR, "504": _ERROR,
            },
        }},
        "/api/v1/models/{model}/predict": {"post": {
            "summary": "Classify one image and explain it with Grad-CAM",
            "description": (
                "The image (PNG, JPEG, BMP, TIFF or DICOM) as multipart field `image` or as the raw body with an "
                "`image/*` or `application/dicom` content type (a multipart DICOM is a `.dcm` file or sniffed from "
                "its bytes). With `Accept: image/png` the answer is the overlay PNG itself."
            ),
            "operationId": "predict",
            "parameters": [_MODEL_PARAM, _VERSION_PARAM, _EXPLAIN_PARAM],
            "requestBody": {"required": True, "content": {
                "multipart/form-data": {"schema": {
                    "type": "object", "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }},
                "image/png": _BINARY, "image/jpeg": _BINARY, "image/bmp": _BINARY, "image/tiff": _BINARY,
                "application/dicom": _BINARY,
            }},
            "responses": {
                "200": {"description": "the diagnosis and its explanation", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Prediction"}},
                    "image/png": _BINARY,
                }},
                **errors, "502": _ERROR, "422": _ERROR,
            },
        }},
        "/api/v1/openapi.json": {"get": {
            "summary": "This document", "operationId": "openapi", "security": [],
            "responses": {"200": {"description": "OpenAPI 3.0", "content": {"application/json": {"schema": {"type": "object"}}}}},
        }},
    }
    paths.update(extra_paths or {})
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "medrobust",
            "version": package_version(),
            "description": "Medical image classification with Grad-CAM explanations, served from the SavedModel contract.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "MEDROBUST_API_TOKEN, when set"}},
            "responses": {"Error": {"description": "an error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
            "schemas": {
                "Error": {
                    "type": "object", "required": ["error"],
                    "properties": {"error": {
                        "type": "object", "required": ["code", "message"],
                        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                    }},
                },
                "Status": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
                "Readiness": {
                    "type": "object", "required": ["ready", "backend", "models"],
                    "properties": {
                        "status": {"type": "string"},
                        "ready": {"type": "boolean"},
                        "backend": {"type": "string"},
                        # TF Serving's ModelVersionStatus.State name (AVAILABLE, LOADING, ...) or the gRPC status the check got
                        "models": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                },
                "Model": {
                    "type": "object",
                    "required": ["name", "versions", "latest", "state", "card", "class_names", "input_size"],
                    "properties": {
                        "name": {"type": "string"},
                        "task": {"type": "string", "nullable": True},
                        "backbone": {"type": "string", "nullable": True},
                        "attention": {"type": "boolean"},
                        "class_names": {"type": "array", "items": {"type": "string"}},
                        "input_size": {"type": "array", "items": {"type": "integer"}},
                        "versions": {"type": "array", "items": {"type": "integer"}},
                        "latest": {"type": "integer"},
                        "state": {"type": "string"},
                        "backend": {"type": "string"},
                        "summary": {"$ref": "#/components/schemas/CardSummary"},
                        "card": {"type": "object"},
                    },
                },
                "CardSummary": {
                    "type": "object",
                    "description": (
                        "What to read beside a prediction, from the model card: the task, the class names, the "
                        "training set, the validation figures with chance (1/K), and `notice` for a demo model "
                        "trained on synthetic images. A field the card does not record is null."
                    ),
                    "required": ["task", "class_names", "dataset", "synthetic", "validation", "notice"],
                    "properties": {
                        "task": {"type": "string", "nullable": True},
                        "class_names": {"type": "array", "items": {"type": "string"}},
                        "dataset": {
                            "type": "string", "nullable": True,
                            "description": "The training set and its split sizes: `synthetic:240 (train 144, val 48, test 48)`.",
                        },
                        "synthetic": {"type": "boolean", "nullable": True},
                        "validation": {
                            "type": "object", "nullable": True,
                            "required": ["accuracy", "balanced_accuracy", "images", "chance"],
                            "properties": {
                                "accuracy": {"type": "number", "nullable": True, "minimum": 0, "maximum": 1},
                                "balanced_accuracy": {"type": "number", "nullable": True, "minimum": 0, "maximum": 1},
                                "images": {"type": "integer", "nullable": True},
                                "chance": {"type": "number", "nullable": True, "minimum": 0, "maximum": 1},
                            },
                        },
                        "notice": {
                            "type": "string", "nullable": True,
                            "description": "`Demo model trained on synthetic images: not a diagnosis` when it was; else null.",
                        },
                    },
                },
                "Prediction": {
                    "type": "object",
                    "required": ["model", "version", "task", "label", "class_index", "probabilities", "timings_ms"],
                    "properties": {
                        "model": {"type": "string"},
                        "version": {"type": "integer"},
                        "task": {"type": "string"},
                        "label": {"type": "string"},
                        "class_index": {"type": "integer", "minimum": 0},
                        "probabilities": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1}},
                        "image_size": {
                            "type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2,
                            "description": "The upload's width and height, EXIF orientation applied.",
                        },
                        "overlay_size": {
                            "type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2, "nullable": True,
                            "description": "The overlays' width and height: the upload's aspect, at most 2048 px on the long side.",
                        },
                        "overlay_png": {"type": "string", "format": "byte", "nullable": True},
                        "attention_png": {"type": "string", "format": "byte"},
                        "overlay_omitted": {
                            "type": "object",
                            "description": "Overlays left out (overlay, attention) and why: the model's map was unusable.",
                            "additionalProperties": {"type": "string"},
                        },
                        "heatmap_grid": {
                            "type": "object", "nullable": True, "required": ["layer", "shape", "values"],
                            "additionalProperties": False,
                            "description": (
                                "With explain=gradcam: the Grad-CAM map before it is resized for the overlay, at the "
                                "resolution of the layer it reads (the model card's gradcam_layer and gradcam_grid), "
                                "rows of values in [0, 1]. Null, with heatmap_grid_omitted saying why, when the "
                                "version was exported without it or answered an unusable one."
                            ),
                            "properties": {
                                "layer": {"type": "string"},
                                "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2},
                                "values": {
                                    "type": "array",
                                    "items": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}},
                                },
                            },
                        },
                        "heatmap_grid_omitted": {"type": "string", "description": "Why heatmap_grid is null."},
                        "timings_ms": {"type": "object", "additionalProperties": {"type": "number"}},
                        "dicom": {"$ref": "#/components/schemas/Dicom"},
                        "display_png": {
                            "type": "string", "format": "byte",
                            "description": (
                                "For a DICOM upload: the windowed 8-bit picture the overlays are drawn on (PNG, "
                                "base64, `overlay_size`), the image the model saw before resizing."
                            ),
                        },
                        "model_summary": {"$ref": "#/components/schemas/CardSummary"},
                    },
                },
                "Dicom": {
                    "type": "object",
                    "description": (
                        "For a DICOM upload, all the answer says of its header; no patient or study field "
                        "ever appears."
                    ),
                    "required": ["modality", "photometric_interpretation", "frame", "window"],
                    "additionalProperties": False,
                    "properties": {
                        "modality": {
                            "type": "string", "nullable": True,
                            "description": "A defined term (CR, DX, CT, MR, ...); null when the file holds another value.",
                        },
                        "photometric_interpretation": {
                            "type": "string",
                            "enum": list(PHOTOMETRIC),
                        },
                        "frame": {
                            "type": "object", "required": ["index", "count"], "additionalProperties": False,
                            "description": "The frame decoded (the first) and how many the file holds.",
                            "properties": {
                                "index": {"type": "integer", "minimum": 0},
                                "count": {"type": "integer", "minimum": 1},
                            },
                        },
                        "window": {
                            "type": "object", "nullable": True, "required": ["source", "center", "width"],
                            "additionalProperties": False,
                            "description": (
                                "How stored values became grey levels, in modality units: the header's first "
                                "window, its VOI LUT, or the 0.5-99.5 percentile range. Null for colour."
                            ),
                            "properties": {
                                "source": {"type": "string", "enum": ["window", "voi_lut", "percentile"]},
                                "center": {"type": "number", "nullable": True},
                                "width": {"type": "number", "nullable": True},
                            },
                        },
                    },
                },
            },
        },
    }
