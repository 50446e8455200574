"""Headless Chromium opens the page, uploads an image made at test time, and sees the label and a non-blank overlay."""

from __future__ import annotations

import base64
import io
import os

import pytest
from PIL import Image

from service.app import create_app
from service.card_summary import DEMO_NOTICE
from tests.e2e.conftest import serving
from tests.integration import service_images as images
from training.contract.config import ServiceConfig

pytestmark = [pytest.mark.system, pytest.mark.browser]


@pytest.fixture
def live_server(tiny_repo):
    from service.embedded import EmbeddedPredictor

    predictor = EmbeddedPredictor(tiny_repo.path, poll_seconds=3600)
    app = create_app(ServiceConfig(model_repo=tiny_repo.path), predictor=predictor)
    with serving(app) as url:
        yield url
    predictor.close()


def test_upload_shows_label_and_overlay(live_server, browser, tiny_repo, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    image = tmp_path / "upload.png"  # a photo-sized PNG of noise: the page and the model take any RGB image
    image.write_bytes(images.png(320, 240))
    browser.get(live_server + "/")
    assert "Explain a prediction" in browser.page_source
    Select(browser.find_element(By.ID, "model")).select_by_value(tiny_repo.attention)
    browser.find_element(By.ID, "file").send_keys(str(image))
    WebDriverWait(browser, 120).until(ec.visibility_of_element_located((By.ID, "result")))
    label = browser.find_element(By.ID, "label").text
    assert label, "no label shown"
    assert browser.find_element(By.ID, "status").text == ""
    src = browser.find_element(By.ID, "overlay").get_attribute("src")
    assert src.startswith("data:image/png;base64,")
    overlay = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("L")
    low, high = overlay.getextrema()
    assert high - low > 10, "the overlay is blank"
    assert browser.find_element(By.ID, "attention-figure").is_displayed()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#bars rect.bar")) == 3
    # The tiny models are trained on the synthetic set: the page says so, with the card's figures.
    assert browser.find_element(By.ID, "demo-banner").text == DEMO_NOTICE
    validation = browser.find_element(By.ID, "about-validation").text
    assert "balanced accuracy" in validation and "chance 33.3%" in validation, validation
    assert browser.find_element(By.ID, "about-task").text == "demo"
    assert browser.find_element(By.ID, "about-dataset").text.startswith(tiny_repo.dataset_spec)
    assert "synthetic lesion: ring" in browser.find_element(By.ID, "about-classes").text
    for figure, colormap in (("overlay-figure", "jet"), ("attention-figure", "viridis")):
        scale = browser.find_element(By.CSS_SELECTOR, f"#{figure} .scale")
        assert scale.is_displayed() and f"{colormap} colour map" in scale.text and "0 low" in scale.text
        bar = scale.find_element(By.CSS_SELECTOR, "img.scale-bar")
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", bar) == 256
        assert bar.size["width"] > 50 and bar.size["height"] >= 8
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] if hasattr(browser, "get_log") else []
    assert not errors, errors  # a CSP violation or script error would show here
    shot = os.environ.get("MEDROBUST_SCREENSHOT")
    if shot:
        browser.save_screenshot(shot)


def test_a_dcm_upload_shows_its_label_its_overlay_and_no_patient(live_server, browser, tiny_repo, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from tests import dicom_files

    # The picker accepts .dcm; the file name and the header carry identifiers, as exports do.
    browser.get(live_server + "/")
    assert ".dcm" in browser.find_element(By.ID, "file").get_attribute("accept")
    image = dicom_files.write(tmp_path / "Zyxwick_Quentin.dcm", dicom_files.chest_xray(rows=240, columns=320))
    Select(browser.find_element(By.ID, "model")).select_by_value(tiny_repo.baseline)
    browser.find_element(By.ID, "file").send_keys(str(image))
    WebDriverWait(browser, 120).until(ec.visibility_of_element_located((By.ID, "result")))
    assert browser.find_element(By.ID, "label").text, "no label shown"
    meta = browser.find_element(By.ID, "meta").text
    assert "DICOM CR MONOCHROME1 frame 1 of 1 window C 1000 W 2001" in meta
    src = browser.find_element(By.ID, "overlay").get_attribute("src")
    overlay = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    assert overlay.size == (320, 240)  # the image's own columns x rows
    assert not browser.find_element(By.ID, "original-figure").is_displayed()  # a browser cannot show DICOM
    windowed = browser.find_element(By.ID, "windowed")  # ... so the page shows the windowed picture the model saw
    assert browser.find_element(By.ID, "windowed-figure").is_displayed()
    assert browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", windowed) == [320, 240]
    assert dicom_files.leaks(browser.find_element(By.ID, "result").text) == []
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] if hasattr(browser, "get_log") else []
    assert not errors, errors
