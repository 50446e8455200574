"""The HTTP API through both backends: answers, overlays, the bad-input table, tokens, headers."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from service.app import create_app
from tests.integration import service_images as images
from training.contract.config import ServiceConfig


@pytest.fixture
def make_client(tiny_repo, predictor):
    def make(**overrides):
        config = ServiceConfig(model_repo=tiny_repo.path, **overrides)
        return create_app(config, predictor=predictor).test_client()

    return make


@pytest.fixture
def client(make_client):
    return make_client()


def _post(client, model, data, content_type="image/png", query="", **kwargs):
    return client.post(f"/api/v1/models/{model}/predict{query}", data=data, content_type=content_type, **kwargs)


def _nameless_parts() -> tuple[str, bytes]:
    """A file part without a name beside a named field: Werkzeug keys it None."""
    body = (
        b'--XX\r\nContent-Disposition: form-data; filename="a.png"\r\nContent-Type: image/png\r\n\r\n' + images.png()
        + b'\r\n--XX\r\nContent-Disposition: form-data; name="note"\r\n\r\nx\r\n--XX--\r\n'
    )
    return "multipart/form-data; boundary=XX", body


def _many_parts(count: int) -> tuple[str, bytes]:
    parts = b"".join(b'--XX\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % i for i in range(count))
    return "multipart/form-data; boundary=XX", parts + b"--XX--\r\n"


def _multipart(field: str, data: bytes) -> tuple[str, bytes]:
    """(content type, body) of a multipart form with one file, encoded in memory."""
    from werkzeug.datastructures import FileStorage
    from werkzeug.test import encode_multipart

    boundary, body = encode_multipart({field: FileStorage(io.BytesIO(data), "upload.png", content_type="image/png")})
    return f"multipart/form-data; boundary={boundary}", body


def _png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image.size


def test_predict_answers_label_probabilities_and_overlay_at_upload_size(client, tiny_repo):
    response = _post(client, tiny_repo.baseline, images.png(96, 72))
    assert response.status_code == 200, response.json
    body = response.json
    card = client.get(f"/api/v1/models/{tiny_repo.baseline}").json["card"]
    assert body["model"] == tiny_repo.baseline and body["task"] == "demo"
    assert body["label"] in card["class_names"] and body["label"] == card["class_names"][body["class_index"]]
    assert list(body["probabilities"]) == card["class_names"]
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert _png_size(base64.b64decode(body["overlay_png"])) == (96, 72)
    assert body["image_size"] == body["overlay_size"] == [96, 72]
    assert "attention_png" not in body
    assert set(body["timings_ms"]) == {"decode", "model", "overlay", "total"}
    assert response.headers["Cache-Control"] == "no-store"
    grid = body["heatmap_grid"]  # the raw Grad-CAM map at its layer's resolution
    assert (grid["layer"], grid["shape"]) == (card["gradcam_layer"], card["gradcam_grid"]) == ("conv3_block4_out", [8, 8])
    values = np.array(grid["values"])
    assert values.shape == (8, 8) and values.min() >= 0 and values.max() in (0.0, 1.0)


def test_a_huge_upload_is_answered_with_overlays_capped_at_2048_px(client, tiny_repo):
    body = _post(client, tiny_repo.attention, images.png(4100, 1025)).json
    assert body["image_size"] == [4100, 1025] and body["overlay_size"] == [2048, 512]
    for key in ("overlay_png", "attention_png"):
        assert _png_size(base64.b64decode(body[key])) == (2048, 512)


def test_when_every_decode_slot_stays_busy_the_answer_is_503_with_retry_after(client, tiny_repo, monkeypatch):
    import service.explain

    monkeypatch.setattr(service.explain, "DECODE_WAIT_SECONDS", 0.05)
    slots = client.application.extensions["medrobust"].decode_slots
    taken = [slots.acquire(blocking=False) for _ in range(ServiceConfig(model_repo=tiny_repo.path).max_decodes)]
    try:
        response = _post(client, tiny_repo.baseline, images.png(40, 30))
    finally:
        for _ in taken:
            slots.release()
    assert all(taken) and response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.json["error"]["code"] == "busy"
    assert _post(client, tiny_repo.baseline, images.png(40, 30)).status_code == 200


def test_attentive_model_adds_attention_map(client, tiny_repo):
    body = _post(client, tiny_repo.attention, images.jpeg(50, 70), "image/jpeg").json
    assert _png_size(base64.b64decode(body["attention_png"])) == (50, 70)
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"]))).convert("L")
    assert overlay.getextrema()[1] > overlay.getextrema()[0]  # not blank


def test_multipart_upload_and_png_accept(client, tiny_repo):
    response = client.post(
        f"/api/v1/models/{tiny_repo.baseline}/predict",
        data={"image": (io.BytesIO(images.png(40, 30)), "scan.png")},
        content_type="multipart/form-data",
        headers={"Accept": "image/png"},
    )
    assert response.status_code == 200
    assert response.mimetype == "image/png"
    assert _png_size(response.data) == (40, 30)


def test_explain_none_skips_overlay(client, tiny_repo):
    body = _post(client, tiny_repo.baseline, images.png(), query="?explain=none").json
    assert body["overlay_png"] is None and body["label"]


def test_pinned_version(client, tiny_repo):
    assert _post(client, tiny_repo.baseline, images.png(), query="?version=1").json["version"] == 1
    response = _post(client, tiny_repo.baseline, images.png(), query="?version=99")
    assert (response.status_code, response.json["error"]["code"]) == (404, "model_not_found")


def test_models_listing(client, tiny_repo):
    listed = {m["name"]: m for m in client.get("/api/v1/models").json["models"]}
    assert set(listed) == set(tiny_repo.models)
    assert listed[tiny_repo.attention]["attention"] is True
    assert listed[tiny_repo.baseline]["versions"] == [1]
    assert listed[tiny_repo.baseline]["state"] == "AVAILABLE"
    assert client.get("/api/v1/models/nope-resnet50-baseline").status_code == 404


BAD_INPUTS = [
    # (case, body, content type, status, code)
    ("decompression bomb", images.decompression_bomb_png(), "image/png", 413, "image_too_large"),
    ("truncated JPEG", images.truncated_jpeg(), "image/jpeg", 400, "invalid_image"),
    ("zero-byte body", b"", "image/png", 400, "invalid_image"),
    ("text sent as image/png", b"patient notes, not pixels\n" * 4, "image/png", 400, "invalid_image"),
    ("animated GIF", images.animated_gif(), "image/gif", 415, "unsupported_media_type"),
    ("1x1 image", images.one_pixel_png(), "image/png", 400, "image_too_small"),
    ("not an image content type", images.png(), "application/octet-stream", 415, "unsupported_media_type"),
    ("no content type", images.png(), "", 415, "unsupported_media_type"),
    ("body over MEDROBUST_MAX_UPLOAD_BYTES", b"\x89PNG" + b"\0" * 300_000, "image/png", 413, "payload_too_large"),
    ("over MEDROBUST_MAX_PIXELS", images.flat_png(600, 500), "image/png", 413, "image_too_large"),
]
GOOD_ODD_INPUTS = [
    ("16-bit grey PNG", images.grey16_png(), "image/png", (80, 60)),
    ("CMYK JPEG", images.cmyk_jpeg(), "image/jpeg", (64, 48)),
    ("RGBA PNG", images.rgba_png(), "image/png", (96, 72)),
    ("EXIF-rotated JPEG", images.exif_rotated_jpeg(), "image/jpeg", (40, 80)),
    ("BMP", images.bmp(), "image/bmp", (96, 72)),
    ("TIFF", images.tiff(), "image/tiff", (96, 72)),
]


@pytest.mark.parametrize(("case", "body", "content_type", "status", "code"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_its_error_and_the_service_still_answers(make_client, tiny_repo, case, body, content_type, status, code):
    client = make_client(max_upload_bytes=200_000, max_pixels=250_000)
    response = _post(client, tiny_repo.baseline, body, content_type)
    assert (response.status_code, response.json["error"]["code"]) == (status, code), response.json
    assert response.json["error"]["message"]
    assert _post(client, tiny_repo.baseline, images.png()).status_code == 200
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(("case", "body", "content_type", "size"), GOOD_ODD_INPUTS, ids=[c[0] for c in GOOD_ODD_INPUTS])
def test_unusual_but_valid_images_are_handled(client, tiny_repo, case, body, content_type, size):
    response = _post(client, tiny_repo.baseline, body, content_type)
    assert response.status_code == 200, response.json
    assert response.json["image_size"] == list(size)
    assert _png_size(base64.b64decode(response.json["overlay_png"])) == size


@pytest.mark.parametrize(
    ("path_query", "kwargs", "status", "code"),
    [
        ("/api/v1/models/nope-resnet50-baseline/predict", {}, 404, "model_not_found"),
        ("/api/v1/models/..%2F..%2Fetc/predict", {}, 404, "not_found"),  # a slash never reaches a model name
        ("/api/v1/models/..%5C..%5Cetc/predict", {}, 404, "model_not_found"),
        ("/api/v1/models/{baseline}/predict?explain=shap", {}, 400, "invalid_argument"),
        ("/api/v1/models/{baseline}/predict?explain=none", {"headers": {"Accept": "image/png"}}, 406, "not_acceptable"),
        ("/api/v1/models/{baseline}/predict", dict(zip(("content_type", "data"), _multipart("file", b"x"))), 400, "missing_image"),
        ("/api/v1/nowhere", {}, 404, "not_found"),
        ("/api/v1/models/{baseline}/predict?version=%C2%B2", {}, 400, "invalid_version"),  # "²".isdigit() is True
        ("/api/v1/models/{baseline}/predict?version=" + "9" * 5000, {}, 400, "invalid_version"),
        ("/api/v1/models/{baseline}/predict?version=-1", {}, 400, "invalid_version"),
        ("/api/v1/models/{baseline}/predict?version=no%20such", {}, 400, "invalid_version"),
        ("/api/v1/models/{baseline}/predict?version=nolabel", {}, 404, "model_not_found"),
        ("/api/v1/models/{baseline}/predict?version=999999999999999999", {}, 404, "model_not_found"),
        ("/api/v1/models/{baseline}/predict", dict(zip(("content_type", "data"), _nameless_parts())), 400, "missing_image"),
        ("/api/v1/models/{baseline}/predict", dict(zip(("content_type", "data"), _many_parts(1001))), 413, "payload_too_large"),
    ],
    ids=lambda v: v[:60] if isinstance(v, str) else None,
)
def test_request_errors(client, tiny_repo, path_query, kwargs, status, code):
    kwargs = {"data": images.png(), "content_type": "image/png", **kwargs}
    response = client.post(path_query.format(baseline=tiny_repo.baseline), **kwargs)
    assert (response.status_code, response.json["error"]["code"]) == (status, code), response.json
    assert "Traceback" not in response.json["error"]["message"]


def test_too_many_form_parts_is_not_called_a_large_body(client, tiny_repo):
    content_type, body = _many_parts(1001)
    message = _post(client, tiny_repo.baseline, body, content_type).json["error"]["message"]
    assert message.startswith("expected a multipart form of at most 1,000 parts") and "bytes (MEDROBUST" not in message


def test_invented_methods_share_one_label(client, tiny_repo):
    """gunicorn passes any 3-20 letter token as a method; each must not become a new series."""
    for method in ("FOOBAR", "QWERTYUIOP", "BREW"):
        assert client.open("/api/v1/models", method=method).status_code == 405
    exposition = client.application.extensions["medrobust"].metrics.exposition().decode()
    assert "FOOBAR" not in exposition and "BREW" not in exposition
    assert 'medrobust_http_requests_total{endpoint="unmatched",method="other",status="405"} 3.0' in exposition


def test_wrong_method_is_json(client, tiny_repo):
    response = client.get(f"/api/v1/models/{tiny_repo.baseline}/predict")
    assert (response.status_code, response.json["error"]["code"]) == (405, "method_not_allowed")


def test_api_token(make_client, tiny_repo):
    client = make_client(api_token="s3cret", admin_token="adm1n")
    assert client.get("/api/v1/models").status_code == 401
    assert client.get("/api/v1/models").headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/api/v1/models", headers={"Authorization": "Bearer wrong"}).json["error"]["code"] == "unauthorized"
    assert client.get("/api/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/api/v1/models", headers={"Authorization": "Bearer adm1n"}).status_code == 200
    assert client.get("/api/v1/openapi.json").status_code == 200  # public, like the health checks
    assert client.get("/healthz").status_code == 200


def test_security_headers_on_page_and_api(client):
    for path in ("/", "/api/v1/models", "/static/app.js"):
        with client.get(path) as response:  # static files stream from an open file
            assert response.status_code == 200
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
            assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_page_lists_models_and_loads_no_inline_script(client, tiny_repo):
    html = client.get("/").get_data(as_text=True)
    assert tiny_repo.baseline in html and tiny_repo.attention in html
    assert "<script>" not in html and "style=" not in html and "http" not in html.replace("http-equiv", "")


def test_readyz_and_metrics(client, tiny_repo):
    assert client.get("/readyz").json["status"] == "ready"
    _post(client, tiny_repo.baseline, images.png())
    _post(client, tiny_repo.baseline, b"", "image/png")
    text = client.application.extensions["medrobust"].metrics.exposition().decode()
    endpoint = "/api/v1/models/<model>/predict"
    assert f'medrobust_http_requests_total{{endpoint="{endpoint}",method="POST",status="200"}} 1.0' in text
    assert f'medrobust_http_requests_total{{endpoint="{endpoint}",method="POST",status="400"}} 1.0' in text
    assert f'medrobust_http_request_duration_seconds_count{{endpoint="{endpoint}"}} 2.0' in text
    assert 'medrobust_predictions_total{label=' in text
    assert 'medrobust_backend_request_duration_seconds_count{backend="' in text and 'signature="gradcam"} 1.0' in text
    assert "medrobust_models_loaded " in text


def test_backend_errors_are_counted(client):
    client.post("/api/v1/models/nope-resnet50-baseline/predict", data=images.png(), content_type="image/png")
    text = client.application.extensions["medrobust"].metrics.exposition().decode()
    assert 'code="NOT_FOUND"' in text


def test_uploads_never_touch_disk(client, tiny_repo, monkeypatch):
    import tempfile

    import werkzeug.formparser

    def refuse(*args, **kwargs):
        raise AssertionError("an upload was about to be written to a temporary file")

    for module in (tempfile, werkzeug.formparser):
        for name in ("TemporaryFile", "SpooledTemporaryFile", "NamedTemporaryFile", "mkstemp"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse)
    big = images.png(700, 700)  # over werkzeug's 500 KB threshold for spooling multipart files to disk
    assert len(big) > 600_000
    # Encoded here, in memory: the test client would otherwise spool the request body itself.
    content_type, body = _multipart("image", big)
    response = _post(client, tiny_repo.baseline, body, content_type)
    assert response.status_code == 200, response.json
    assert response.json["image_size"] == [700, 700]


def test_extensions_reuse_the_admin_check_and_the_nav(tiny_repo, predictor):
    from flask import Blueprint, jsonify

    from service.auth import require_admin
    from service.state import add_nav_link

    def audits(app):
        bp = Blueprint("audits", __name__)

        @bp.post("/api/v1/audits")
        @require_admin
        def start():
            return jsonify(started=True), 202

        app.register_blueprint(bp)
        add_nav_link(app, "Audits", "/audits")

    closed = create_app(ServiceConfig(model_repo=tiny_repo.path), predictor=predictor, extensions=[audits]).test_client()
    answer = closed.post("/api/v1/audits")
    assert (answer.status_code, answer.json["error"]["code"]) == (403, "admin_disabled")
    assert "MEDROBUST_ADMIN_TOKEN" in answer.json["error"]["message"]
    assert 'href="/audits"' in closed.get("/").get_data(as_text=True)

    app = create_app(ServiceConfig(model_repo=tiny_repo.path, admin_token="adm1n"), predictor=predictor, extensions=[audits])
    open_ = app.test_client()
    assert open_.post("/api/v1/audits").status_code == 401
    assert open_.post("/api/v1/audits", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert open_.post("/api/v1/audits", headers={"Authorization": "Bearer adm1n"}).status_code == 202
