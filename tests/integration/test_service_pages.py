"""The pages say what they show: the model's task, training set, validation figures and demo notice
beside every prediction, the overlays' colour scales, the API's own docs page, readable messages."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from service.app import create_app
from service.card_summary import DEMO_NOTICE, card_summary
from tests.integration import service_images as images
from training.contract.config import ServiceConfig


@pytest.fixture
def client(tiny_repo, embedded_predictor):
    return create_app(ServiceConfig(model_repo=tiny_repo.path), predictor=embedded_predictor).test_client()


def test_a_prediction_carries_the_cards_summary_and_the_demo_notice(client, tiny_repo, embedded_predictor):
    body = client.post(f"/api/v1/models/{tiny_repo.attention}/predict", data=images.png(), content_type="image/png").json
    summary = body["model_summary"]
    card = embedded_predictor.model_card(tiny_repo.attention, body["version"])
    val = card["metrics"]["val"]
    assert summary == {
        "task": "demo",
        "class_names": ["synthetic lesion: ring", "synthetic lesion: spot", "synthetic lesion: streak"],
        "dataset": f"{card['dataset']['source']} (train {card['dataset']['splits']['train']}, "
                   f"val {card['dataset']['splits']['val']}, test {card['dataset']['splits']['test']})",
        "synthetic": True,
        "validation": {"accuracy": val["accuracy"], "balanced_accuracy": val["balanced_accuracy"], "images": val["n"],
                       "chance": pytest.approx(1 / 3)},
        "notice": DEMO_NOTICE,
    }
    listed = {m["name"]: m for m in client.get("/api/v1/models").json["models"]}
    assert listed[tiny_repo.attention]["summary"]["notice"] == DEMO_NOTICE


@pytest.mark.parametrize(
    "card, expected",
    [
        ({"task": "derm", "class_names": ["a", "b"], "dataset": {"kind": "ham10000", "source": "ham10000:/d", "synthetic": False},
          "metrics": {"val": {"n": 10, "accuracy": 0.9, "balanced_accuracy": 0.8}}},
         {"synthetic": False, "notice": None, "dataset": "ham10000:/d", "validation": {"accuracy": 0.9, "balanced_accuracy": 0.8,
                                                                                      "images": 10, "chance": 0.5}}),
        # A card written before the dataset record: nothing is invented.
        ({"task": "derm", "class_names": ["a", "b"]}, {"synthetic": None, "notice": None, "dataset": None, "validation": None}),
        # An empty validation split has no figures to show.
        ({"class_names": ["a"], "dataset": {"kind": "synthetic", "source": "synthetic:30"}, "metrics": {"val": {"n": 0}}},
         {"synthetic": True, "notice": DEMO_NOTICE, "dataset": "synthetic:30", "validation": None}),
    ],
    ids=["real data", "old card", "no validation split"],
)
def test_the_summary_says_only_what_the_card_records(card, expected):
    summary = card_summary(card).to_json()
    assert {key: summary[key] for key in expected} == expected


def test_the_page_marks_demo_models_and_carries_both_colour_scales(client, tiny_repo):
    page = client.get("/").get_data(as_text=True)
    option = re.search(rf'<option value="{tiny_repo.baseline}"[^>]*>([^<]*)</option>', page).group(1)
    assert "demo on synthetic images" in option
    for element in ("demo-banner", "about-task", "about-dataset", "about-validation", "about-classes", "windowed-figure"):
        assert f'id="{element}"' in page
    assert 'src="/colour-scale/jet.png"' in page and "Grad-CAM weight, jet colour map" in page
    assert 'src="/colour-scale/viridis.png"' in page and "attention weight, viridis colour map" in page
    assert page.count("0 low") == 2 and page.count("1 high") == 2
    assert '<a href="/api/docs">API</a>' in page


@pytest.mark.parametrize("colormap", ["jet", "viridis"])
def test_a_colour_scale_runs_from_the_maps_colour_at_0_to_its_colour_at_1(client, colormap):
    from matplotlib import colormaps

    response = client.get(f"/colour-scale/{colormap}.png")
    assert response.status_code == 200 and response.mimetype == "image/png"
    with Image.open(io.BytesIO(response.data)) as picture:
        pixels = np.asarray(picture.convert("RGB"))
    ends = colormaps[colormap]([0, 255], bytes=True)[:, :3]
    assert np.array_equal(pixels[0, 0], ends[0]) and np.array_equal(pixels[0, -1], ends[1])


def test_an_unknown_colour_scale_is_a_json_404(client):
    response = client.get("/colour-scale/hot.png")
    assert response.status_code == 404 and response.json["error"]["code"] == "not_found"
    assert "got hot" in response.json["error"]["message"]


@pytest.mark.parametrize(
    "data, shown",
    [(b"hello, this is a text file\n", 'starts with the text "hello, t"'), (b"\x89\x00\xffbinary junk", "first bytes are 89 00 ff 62")],
    ids=["txt", "binary"],
)
def test_a_file_that_is_not_an_image_gets_a_message_without_a_python_repr(client, tiny_repo, data, shown):
    from werkzeug.datastructures import FileStorage

    response = client.post(
        f"/api/v1/models/{tiny_repo.baseline}/predict",
        data={"image": FileStorage(io.BytesIO(data), "notes.txt", content_type="text/plain")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 400
    message = response.json["error"]["message"]
    assert shown in message and "b'" not in message and "\\x" not in message


def test_the_api_docs_page_is_swagger_ui_from_the_package_under_the_csp(client):
    page = client.get("/api/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'data-openapi-url="/api/v1/openapi.json"' in html
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all('src="' in attributes and not body.strip() for attributes, body in scripts)  # no inline script
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    for name, kind in (("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "css")):
        with client.get(f"/api/docs/assets/{name}") as asset:  # a file response: closed, or it warns
            assert asset.status_code == 200 and kind in asset.mimetype and len(asset.data) > 10_000
    missing = client.get("/api/docs/assets/index.html")  # the package's own page, with its inline script: not served
    assert missing.status_code == 404 and missing.json["error"]["code"] == "not_found"


def test_with_a_token_set_the_page_lists_no_model_until_the_token_is_given(tiny_repo, embedded_predictor):
    import base64

    client = create_app(ServiceConfig(model_repo=tiny_repo.path, api_token="page-secret"), predictor=embedded_predictor).test_client()
    refused = client.get("/")
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")
    assert tiny_repo.attention not in refused.get_data(as_text=True)
    basic = {"Authorization": "Basic " + base64.b64encode(b"anyone:page-secret").decode()}
    page = client.get("/", headers=basic)
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and tiny_repo.attention in text
    assert 'value="page-secret"' in text and page.headers["Cache-Control"] == "no-store"
    open_client = create_app(ServiceConfig(model_repo=tiny_repo.path), predictor=embedded_predictor).test_client()
    assert tiny_repo.attention in open_client.get("/").get_data(as_text=True)
