"""Headless Chromium on the Audits page and the API docs: the report's figures fit their card from a
phone's width up, nothing scrolls the page sideways, and Swagger UI loads under the page's CSP."""

from __future__ import annotations

import numpy as np
import pytest

from audit.report import EXAMPLES, examples_figure, report_dir, write_report
from audit.store import AuditStore
from tests.audit_runs import CARD, EIGHT, make_result, one_class_result
from tests.e2e.conftest import serving, set_viewport, severe_console_errors

pytestmark = [pytest.mark.system, pytest.mark.browser]


def fooled_examples(n: int = 3) -> dict:
    """What a run keeps of its fooled images (audit.runner writes examples.npz with these keys)."""
    rng = np.random.default_rng(0)
    clean = rng.random((n, 64, 64, 3)).astype(np.float32)
    return {
        "index": np.arange(n), "clean": clean, "adversarial": np.clip(clean + rng.uniform(-0.01, 0.01, clean.shape), 0, 1),
        "clean_class": np.arange(n) % 3, "adversarial_class": (np.arange(n) + 1) % 3, "epsilon": np.array(["0.01"] * n),
        "clean_heatmap": rng.random((n, 64, 64)), "adversarial_heatmap": rng.random((n, 64, 64)),
    }


@pytest.fixture
def audits_server(tmp_path):
    """The real app with the Audits pages over a store holding a run and its partner, reports drawn."""
    from audit.web_reader import StoreReader
    from service.app import create_app
    from service.audits_web import audits_extension
    from service.embedded import EmbeddedPredictor
    from training.contract.config import ServiceConfig

    store = AuditStore(f"sqlite:///{tmp_path / 'a.sqlite'}")
    for result in (one_class_result(model="demo-resnet50-baseline", attention=False),
                   make_result(audit_set=EIGHT, robust=(0.75, 0.5, 0.25))):
        run_id = store.start_run(model=result.model, version=1, card={**CARD, "attention": result.attention},
                                 backend="embedded", attack="linf_pgd", config={"steps": 20})
        store.finish_run(run_id, result)
        write_report(store, run_id, artefacts_root=tmp_path / "artefacts")
    # These runs kept no adversarial examples; draw the examples figure the worker would have drawn.
    report = report_dir(store.get_run(2), tmp_path / "artefacts")
    examples_figure(fooled_examples(), list(EIGHT.class_names), report / EXAMPLES)
    repo = tmp_path / "repo"
    repo.mkdir()
    predictor = EmbeddedPredictor(repo)
    app = create_app(ServiceConfig(model_repo=repo), predictor=predictor,
                     extensions=[audits_extension(StoreReader(store, tmp_path / "artefacts"))])
    with serving(app) as url:
        yield url
    predictor.close()
    store.close()


# Each figure's box and its card's content box, and how wide the document is against the viewport.
_MEASURE = """
const out = {viewport: window.innerWidth, document: document.documentElement.scrollWidth, figures: []};
for (const img of document.querySelectorAll('#report .report-figure img')) {
  const card = img.closest('.panel');
  const style = getComputedStyle(card);
  const box = card.getBoundingClientRect();
  const r = img.getBoundingClientRect();
  out.figures.push({id: img.id, loaded: img.complete && img.naturalWidth > 0, natural: img.naturalWidth,
    left: r.left, right: r.right, width: r.width,
    cardLeft: box.left + parseFloat(style.paddingLeft), cardRight: box.right - parseFloat(style.paddingRight)});
}
return out;
"""


@pytest.mark.parametrize("width", [390, 1280, 1920])
def test_the_audits_figures_fit_their_card(audits_server, browser, width):
    from selenium.webdriver.support.ui import WebDriverWait

    set_viewport(browser, width)
    browser.get(audits_server + "/audits?run=2")
    WebDriverWait(browser, 30).until(
        lambda b: all(f["loaded"] for f in b.execute_script(_MEASURE)["figures"])
    )
    measured = browser.execute_script(_MEASURE)
    assert measured["viewport"] == width
    assert measured["document"] <= width, "the page scrolls sideways"  # wide tables scroll inside their card
    assert {f["id"] for f in measured["figures"]} == {"accuracy-figure", "examples-figure"}
    for f in measured["figures"]:
        assert f["left"] >= f["cardLeft"] - 0.5 and f["right"] <= f["cardRight"] + 0.5, f
        if width >= 1280:  # shown at the width it was drawn for, so its 9 pt legends read as 12.5 px
            assert f["width"] == f["natural"] == 1000, f
    assert severe_console_errors(browser) == []


def test_the_audits_page_names_grey_levels_and_chance(audits_server, browser):
    from selenium.webdriver.common.by import By

    browser.get(audits_server + "/audits?run=2")
    text = browser.find_element(By.ID, "report").text
    assert "2.55/255" in text and "Chance level, what guessing gets, is 1/3 = 0.333." in text
    cells = browser.find_elements(By.CSS_SELECTOR, "#points tbody tr:nth-child(2) td")
    for cell in cells[2:5]:  # the mean, the worst class and the balanced figure, each "a [lo, hi]"
        assert cell.text.count("[") == 1 and cell.text.endswith(("]", ")")), cell.text
        assert cell.size["height"] < 30, f"the interval wraps: {cell.text}"


def test_the_api_docs_page_loads_swagger_ui_under_the_csp(audits_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(audits_server + "/")
    browser.find_element(By.LINK_TEXT, "API").click()
    WebDriverWait(browser, 30).until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".swagger-ui .info .title")))
    assert "medrobust" in browser.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text
    operations = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/api/v1/models/{model}/predict", "/api/v1/audits"} <= operations, operations
    assert severe_console_errors(browser) == []  # a CSP violation or script error would show here
