"""DICOM through the HTTP API, both backends: the answer, the overlay, the errors, and no patient data out."""

from __future__ import annotations

import base64
import io
import logging

import numpy as np
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML

from service.app import create_app
from tests import dicom_files as files
from training.contract.config import ServiceConfig


@pytest.fixture
def make_client(tiny_repo, predictor):
    def make(**overrides):
        return create_app(ServiceConfig(model_repo=tiny_repo.path, **overrides), predictor=predictor).test_client()

    return make


@pytest.fixture
def client(make_client):
    return make_client()


def _post(client, model, data, content_type="application/dicom", query=""):
    return client.post(f"/api/v1/models/{model}/predict{query}", data=data, content_type=content_type)


def _post_file(client, model, data, filename, content_type="application/octet-stream"):
    from werkzeug.datastructures import FileStorage

    return client.post(
        f"/api/v1/models/{model}/predict",
        data={"image": FileStorage(io.BytesIO(data), filename, content_type=content_type)},
        content_type="multipart/form-data",
    )


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _png_size(data: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(data))).size


def test_a_dicom_body_is_answered_with_all_that_may_be_said_of_it(client, tiny_repo):
    response = _post(client, tiny_repo.attention, files.chest_xray(rows=48, columns=64))
    assert response.status_code == 200, response.json
    body = response.json
    assert body["dicom"] == {
        "modality": "CR",
        "photometric_interpretation": "MONOCHROME1",
        "frame": {"index": 0, "count": 1},
        "window": {"source": "window", "center": 1000.0, "width": 2001.0},
    }
    # The overlays have the image's own rows x columns.
    assert body["image_size"] == body["overlay_size"] == [64, 48]
    assert _png_size(body["overlay_png"]) == _png_size(body["attention_png"]) == (64, 48)
    assert response.headers["Cache-Control"] == "no-store"


def test_other_uploads_say_nothing_of_dicom(client, tiny_repo):
    assert "dicom" not in _post(client, tiny_repo.baseline, _png(files.grey_ramp()), "image/png").json


@pytest.mark.parametrize("filename, content_type", [
    ("scan.dcm", "application/octet-stream"),  # by its extension
    ("IM000001", "application/octet-stream"),  # sniffed: 'DICM' at byte 128
    ("export.bin", "application/dicom"),  # by the part's content type
])
def test_a_multipart_dicom_is_accepted(client, tiny_repo, filename, content_type):
    response = _post_file(client, tiny_repo.baseline, files.chest_xray(), filename, content_type)
    assert response.status_code == 200, response.json
    assert response.json["dicom"]["modality"] == "CR"


def test_a_multiframe_dicom_answers_its_first_frame(client, tiny_repo):
    frames = np.stack([files.grey_ramp(), 255 - files.grey_ramp()])
    body = _post(client, tiny_repo.baseline, files.encode(files.dataset(frames, multiframe=True))).json
    assert body["dicom"]["frame"] == {"index": 0, "count": 2}


def test_a_large_dicom_gets_its_overlay_under_the_cap(client, tiny_repo):
    y, x = np.mgrid[0:1025, 0:4100]
    body = _post(client, tiny_repo.baseline, files.encode(files.dataset(((x + y) % 256).astype(np.uint8)))).json
    assert body["image_size"] == [4100, 1025] and body["overlay_size"] == [2048, 512]


# --- the same pixels: DICOM and PNG ------------------------------------------------------------


def test_a_pngs_pixels_in_dicom_get_the_pngs_answer(client, tiny_repo):
    rgb = np.random.default_rng(5).integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
    grey = files.grey_ramp()
    for pixels, ds in (
        (rgb, files.dataset(rgb, photometric="RGB")),
        # 8-bit grey with the full-range window (centre 128, width 256) shows its stored values.
        (grey, files.dataset(grey, window=(128.0, 256.0))),
    ):
        from_png = _post(client, tiny_repo.attention, _png(pixels), "image/png").json
        from_dicom = _post(client, tiny_repo.attention, files.encode(ds)).json
        for key in ("label", "class_index", "probabilities", "image_size", "overlay_png", "attention_png"):
            assert from_dicom[key] == from_png[key], key


def test_the_overlay_is_drawn_on_the_windowed_grey_image_the_model_saw(client, tiny_repo):
    stored = files.radiograph_12bit()
    data = files.encode(files.dataset(
        stored, photometric="MONOCHROME1", bits_stored=12, rescale=(2.0, -1000.0), window=(1000.0, 2001.0),
    ))
    # The windowed grey levels by hand (PS3.3 C.11.2.1.2.1), MONOCHROME1 inverted, as a PNG.
    shown = np.clip((stored.astype(np.float64) * 2 - 1000 - 999.5) / 2000 + 0.5, 0, 1)
    windowed = 255 - np.rint(shown * 255).astype(np.uint8)
    from_dicom = _post(client, tiny_repo.baseline, data).json
    from_png = _post(client, tiny_repo.baseline, _png(windowed), "image/png").json
    assert from_dicom["overlay_png"] == from_png["overlay_png"]
    assert from_dicom["probabilities"] == from_png["probabilities"]
    # The page shows that windowed picture beside the overlays (a browser cannot show the file).
    with Image.open(io.BytesIO(base64.b64decode(from_dicom["display_png"]))) as picture:
        assert picture.mode == "RGB" and picture.size == tuple(from_dicom["overlay_size"])
        assert np.array_equal(np.asarray(picture), np.repeat(windowed[..., None], 3, axis=2))
    assert "display_png" not in from_png  # the browser shows a PNG or JPEG itself


# --- errors, and no patient data in any answer, log line or metric ---------------------------------


def _unsupported_syntax() -> bytes:
    ds = files.dataset(files.grey_ramp(), identifiers=True)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    return files.encode(ds)


BAD_DICOM = [
    # (case, body, status, code, words the message must hold)
    ("no pixel data", files.without_pixels(), 400, "no_pixel_data", "without pixel data"),
    ("frames over MEDROBUST_MAX_PIXELS", files.long_multiframe(100), 413, "image_too_large", "100 frames of 64x64"),
    ("unsupported transfer syntax", _unsupported_syntax(), 415, "unsupported_media_type", "MPEG2 Main Profile"),
    ("truncated", files.chest_xray()[:-500], 400, "invalid_image", "decoder rejects"),
    ("declared DICOM, sent text", b"Zyxwick^Quentin, PID-8731-ZQX\n" * 8, 400, "invalid_image", "expected DICOM"),
]


@pytest.mark.parametrize("case, body, status, code, words", BAD_DICOM, ids=[row[0] for row in BAD_DICOM])
def test_bad_dicom_gets_its_error(make_client, tiny_repo, case, body, status, code, words):
    client = make_client(max_pixels=250_000)
    response = _post(client, tiny_repo.baseline, body)
    assert (response.status_code, response.json["error"]["code"]) == (status, code), response.json
    assert words in response.json["error"]["message"]
    assert files.leaks(response.get_data(as_text=True)) == []


def test_no_header_value_reaches_an_answer_a_log_line_or_a_metric(make_client, tiny_repo, caplog):
    caplog.set_level(logging.DEBUG)
    client = make_client(max_pixels=250_000)
    answers = [
        _post(client, tiny_repo.attention, files.chest_xray()),
        _post(client, tiny_repo.baseline, files.chest_xray(), query="?explain=none"),
        _post_file(client, tiny_repo.baseline, files.chest_xray(), "Zyxwick_Quentin.dcm"),
        # The file name is the patient's and the bytes are not DICOM: the refusal names neither.
        _post_file(client, tiny_repo.baseline, b"PID-8731-ZQX " * 40, "Zyxwick_Quentin.dcm"),
        *(_post(client, tiny_repo.baseline, row[1]) for row in BAD_DICOM),
    ]
    assert [a.status_code for a in answers[:3]] == [200, 200, 200]
    assert [a.status_code for a in answers[3:]] == [400, 400, 413, 415, 400, 400]
    for answer in answers:
        assert files.leaks(answer.get_data(as_text=True)) == [], answer.json
    assert files.leaks(caplog.text) == []
    exposition = client.application.extensions["medrobust"].metrics.exposition().decode()
    assert "medrobust_predictions_total" in exposition and files.leaks(exposition) == []


@pytest.mark.parametrize("body, status, code", [
    (lambda: files.compressed(files.with_j2k_size(files.j2k_frame(), 40000, 40000), "1.2.840.10008.1.2.4.90", rows=256, columns=256),
     413, "image_too_large"),
    (lambda: files.compressed(files.with_jpeg_size(files.jpeg_frame(), 30000, 30000), "1.2.840.10008.1.2.4.50", rows=256, columns=256),
     413, "image_too_large"),
    (lambda: files.compressed(files.with_jpeg_size(files.jpeg_frame(), 200, 300), "1.2.840.10008.1.2.4.50", rows=256, columns=256),
     400, "invalid_image"),
])
def test_a_codestream_that_lies_about_its_size_is_refused_as_json(client, tiny_repo, body, status, code):
    response = _post(client, tiny_repo.attention, body())
    assert response.status_code == status and response.json["error"]["code"] == code, response.json
    assert "declaring" in response.json["error"]["message"]


def test_a_deflate_bomb_is_413_and_an_honest_deflated_file_is_answered(make_client, tiny_repo):
    client = make_client(max_pixels=1_000_000)  # an inflation budget of about 20 MB
    refused = _post(client, tiny_repo.attention, files.deflate_bomb(64 << 20))
    assert refused.status_code == 413 and refused.json["error"]["code"] == "image_too_large"
    assert _post(client, tiny_repo.attention, files.deflate_bomb(0)).status_code == 200
