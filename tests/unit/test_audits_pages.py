"""The Audits page reads for people (durations, grey levels, chance, class names) and answers a bad
address with 400 or 404, never 200 or 500."""

from __future__ import annotations

import pytest

from audit.report import write_report
from audit.store import AuditStore
from service.readable import duration_text, epsilon_text, grey_levels
from tests.audit_runs import CARD, make_result

THIRTY_DIGITS = "1" * 30


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """A real app over a real SQLite store with one succeeded run (id 1); only read, so built once."""
    tmp_path = tmp_path_factory.mktemp("audits-pages")
    from audit.web_reader import StoreReader
    from service.app import create_app
    from service.audits_web import audits_extension
    from service.embedded import EmbeddedPredictor
    from training.contract.config import ServiceConfig

    store = AuditStore(f"sqlite:///{tmp_path / 'a.sqlite'}")
    result = make_result()
    run_id = store.start_run(model=result.model, version=1, card=CARD, backend="embedded", attack="linf_pgd", config={"steps": 20})
    store.finish_run(run_id, result)
    write_report(store, run_id, artefacts_root=tmp_path / "artefacts")
    repo = tmp_path / "repo"
    repo.mkdir()
    predictor = EmbeddedPredictor(repo)
    app = create_app(ServiceConfig(model_repo=repo), predictor=predictor,
                     extensions=[audits_extension(StoreReader(store, tmp_path / "artefacts"))])
    yield app.test_client(), store.get_run(run_id)
    predictor.close()
    store.close()


@pytest.mark.parametrize(
    "seconds, text",
    [(None, ""), (0.42, "0.4 s"), (7.25, "7.2 s"), (42.4, "42 s"), (1102.5, "18 min 22 s"), (3599.6, "1 h 0 min"),
     (5400, "1 h 30 min")],
)
def test_durations_read_in_minutes_and_seconds(seconds, text):
    assert duration_text(seconds) == text


@pytest.mark.parametrize("epsilon, text", [("0.01", "0.01 (2.55/255)"), ("0.00125", "0.00125 (0.319/255)"), (8 / 255, f"{8 / 255} (8/255)")])
def test_epsilons_are_also_given_in_grey_levels(epsilon, text):
    assert epsilon_text(epsilon) == text


def test_the_page_gives_durations_grey_levels_and_chance(client):
    client, run = client
    page = client.get("/audits?run=1").get_data(as_text=True)
    assert f"<td>{duration_text(run.duration_seconds)}</td>" in page and "<th>took</th>" in page
    assert f"0.01 is {grey_levels(0.01)} grey levels" in page
    assert "<th>in 1/255</th>" in page and "<td>2.55/255</td>" in page
    assert "Chance level, what guessing gets, is 1/3 = 0.333." in page  # the audit set's three classes
    assert 'class="table-scroll"' in page and 'id="accuracy-figure"' in page


@pytest.mark.parametrize(
    "path, status",
    [
        ("/audits?run=abc", 400),
        ("/audits?run=", 400),
        ("/audits?run=-1", 400),
        ("/audits?run=1.5", 400),
        ("/audits?run=2", 404),
        (f"/audits?run={THIRTY_DIGITS}", 404),
    ],
)
def test_a_bad_run_on_the_page_is_an_error_page_with_its_status(client, path, status):
    client, _ = client
    response = client.get(path)
    assert response.status_code == status
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert f'data-status="{status}"' in page and ("Not a run id" if status == 400 else "No such run") in page


@pytest.mark.parametrize(
    "path",
    [f"/api/v1/audits/{THIRTY_DIGITS}", "/api/v1/audits/2", f"/audits/{THIRTY_DIGITS}/accuracy.png", "/audits/2/accuracy.png",
     "/audits/1/other.png", "/api/v1/audits/abc"],
)
def test_a_run_that_cannot_exist_is_a_json_404(client, path):
    client, _ = client
    response = client.get(path)
    assert response.status_code == 404
    assert response.json["error"]["code"] in ("audit_not_found", "not_found")


def test_a_black_box_only_run_says_so_on_the_page_and_an_honest_one_does_not(client, tmp_path):
    """A run whose served gradient failed its check: the figures are Square's, and the page's first warning says so."""
    from audit.results import SanityCheck
    from audit.web_reader import StoreReader
    from service.app import create_app
    from service.audits_web import audits_extension
    from service.embedded import EmbeddedPredictor
    from training.contract.config import ServiceConfig

    honest_client, _ = client
    assert 'id="black-box-only"' not in honest_client.get("/audits?run=1").get_data(as_text=True)
    store = AuditStore(f"sqlite:///{tmp_path / 'a.sqlite'}")
    failed = SanityCheck("gradient_consistent", False, "the served gradient is not the forward's")
    result = make_result(sanity=(failed,), fooled_by={"square": 1})
    run_id = store.start_run(model=result.model, version=1, card=CARD, backend="embedded", attack="linf_pgd", config={"steps": 20})
    store.finish_run(run_id, result)
    (tmp_path / "repo").mkdir()
    predictor = EmbeddedPredictor(tmp_path / "repo")
    try:
        app = create_app(ServiceConfig(model_repo=tmp_path / "repo"), predictor=predictor,
                         extensions=[audits_extension(StoreReader(store, tmp_path / "artefacts"))])
        page = app.test_client().get(f"/audits?run={run_id}").get_data(as_text=True)
        api = app.test_client().get(f"/api/v1/audits/{run_id}").get_json()
    finally:
        predictor.close()
        store.close()
    assert 'id="black-box-only"' in page and "so linf_pgd was not run; these figures are square" in page
    assert api["black_box_only"] is True
