"""The Audits pages need the API token, as /api/v1/audits does: as a bearer header, or (a browser) the Basic password."""

from __future__ import annotations

import base64

import pytest

from audit.report import write_report
from audit.store import AuditStore
from tests.audit_runs import CARD, make_result

TOKEN = "api-t0ken"
ADMIN = "adm1n-t0ken"
PAGES = ("/audits", "/audits?run=1", "/audits/1/accuracy.png")


def _basic(password: str, user: str = "anyone") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def make_client(tmp_path):
    """A real app over a real store holding one succeeded run, with the tokens given."""
    from audit.web_reader import StoreReader
    from service.app import create_app
    from service.audits_web import audits_extension
    from service.embedded import EmbeddedPredictor
    from training.contract.config import ServiceConfig

    store = AuditStore(f"sqlite:///{tmp_path / 'a.sqlite'}")
    result = make_result()
    run_id = store.start_run(model=result.model, version=1, card=CARD, backend="embedded", attack="linf_pgd", config={"steps": 20})
    store.finish_run(run_id, result)
    write_report(store, run_id, artefacts_root=tmp_path / "artefacts")  # as the worker does when a run ends
    repo = tmp_path / "repo"
    repo.mkdir()
    predictor = EmbeddedPredictor(repo)

    def make(**tokens):
        app = create_app(ServiceConfig(model_repo=repo, **tokens), predictor=predictor,
                         extensions=[audits_extension(StoreReader(store, tmp_path / "artefacts"))])
        return app.test_client()

    yield make
    predictor.close()
    store.close()


@pytest.mark.parametrize("path", PAGES)
@pytest.mark.parametrize("headers, what", [
    ({}, "got no token"),
    ({"Authorization": "Bearer wrong"}, "got a token that does not match"),
    (_basic("wrong"), "got a token that does not match"),
], ids=["none", "wrong-bearer", "wrong-basic"])
def test_a_page_without_the_token_answers_401_asking_the_browser_for_it(make_client, path, headers, what):
    client = make_client(api_token=TOKEN, admin_token=ADMIN)
    with client.get(path, headers=headers) as answer:
        assert answer.status_code == 401
        error = answer.get_json()["error"]
        assert error["code"] == "unauthorized"
        assert error["message"] == (
            "expected the API token (MEDROBUST_API_TOKEN) as 'Authorization: Bearer <token>' or as the password "
            f"the browser asks for, {what}"
        )
        assert answer.headers["WWW-Authenticate"].startswith('Basic realm="medrobust')
        assert TOKEN.encode() not in answer.data and b"demo-resnet50" not in answer.data


@pytest.mark.parametrize("path", PAGES)
@pytest.mark.parametrize("headers", [
    {"Authorization": f"Bearer {TOKEN}"},
    {"Authorization": f"Bearer {ADMIN}"},
    _basic(TOKEN),
    _basic(ADMIN),
    _basic(TOKEN, user=""),  # the user name is not checked
], ids=["bearer", "bearer-admin", "basic", "basic-admin", "basic-no-user"])
def test_a_page_with_the_token_answers_200(make_client, path, headers):
    client = make_client(api_token=TOKEN, admin_token=ADMIN)
    with client.get(path) as refused:  # the same request without the token
        assert refused.status_code == 401
    with client.get(path, headers=headers) as answer:
        assert answer.status_code == 200
        if path.endswith(".png"):
            assert answer.data.startswith(b"\x89PNG")
        else:
            assert b"demo-resnet50-attention" in answer.data


@pytest.mark.parametrize("path", PAGES)
def test_the_pages_are_open_exactly_when_no_token_is_configured(make_client, path):
    # The admin token alone gates admin actions only.
    for tokens, status in (({}, 200), ({"admin_token": ADMIN}, 200), ({"api_token": TOKEN}, 401)):
        with make_client(**tokens).get(path) as answer:
            assert answer.status_code == status, tokens


def test_the_basic_password_opens_the_pages_but_not_the_api(make_client):
    client = make_client(api_token=TOKEN)
    assert client.get("/audits").status_code == 401
    assert client.get("/audits", headers=_basic(TOKEN)).status_code == 200
    assert client.get("/api/v1/audits", headers=_basic(TOKEN)).status_code == 401
    assert client.get("/api/v1/audits", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
