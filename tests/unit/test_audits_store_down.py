"""The Audits pages and API while the audit database does not answer: 503 store_unavailable with
Retry-After (the client comes back), never a 500, and the same pages answer again once it is back."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from audit.store import AuditStore
from tests.audit_runs import CARD, make_result


@pytest.fixture
def reachable_then_not(tmp_path):
    from audit.web_reader import StoreReader
    from service.app import create_app
    from service.audits_web import audits_extension
    from service.embedded import EmbeddedPredictor
    from training.contract.config import ServiceConfig

    store = AuditStore(f"sqlite:///{tmp_path / 'a.sqlite'}")
    run_id = store.start_run(model="demo-resnet50-attention", version=1, card=CARD, backend="embedded",
                             attack="linf_pgd", config={"steps": 20})
    store.finish_run(run_id, make_result())
    repo = tmp_path / "repo"
    repo.mkdir()
    predictor = EmbeddedPredictor(repo)
    client = create_app(ServiceConfig(model_repo=repo), predictor=predictor,
                        extensions=[audits_extension(StoreReader(store, tmp_path / "artefacts"))]).test_client()
    reachable = store.engine
    # A real connection refused: a PostgreSQL URL on a port nothing listens on.
    unreachable = sa.create_engine("postgresql+psycopg2://medrobust:x@127.0.0.1:9/medrobust", connect_args={"connect_timeout": 2})

    def switch(up: bool) -> None:
        store.engine = reachable if up else unreachable

    yield client, run_id, switch
    store.engine = reachable
    unreachable.dispose()
    predictor.close()
    store.close()


@pytest.mark.parametrize("path", ["/api/v1/audits", "/api/v1/audits/{run}", "/audits", "/audits?run={run}"])
def test_a_database_that_does_not_answer_is_503_with_retry_after(reachable_then_not, path):
    client, run_id, switch = reachable_then_not
    url = path.format(run=run_id)
    assert client.get(url).status_code == 200
    switch(False)
    answer = client.get(url)
    assert answer.status_code == 503, answer.get_data(as_text=True)[:300]
    assert answer.json["error"]["code"] == "store_unavailable" and answer.headers["Retry-After"] == "30"
    switch(True)
    assert client.get(url).status_code == 200
