"""Schema-driven: schemathesis generates requests from /api/v1/openapi.json against the real app."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from service.app import create_app
from training.contract.config import ServiceConfig

TOKEN = "schema-test-token"


@pytest.fixture(scope="module")
def api_schema(tiny_repo, embedded_predictor):
    # TensorFlow raises the recursion limit (1000 -> 3000) when first imported; imported inside the
    # first generated case, Hypothesis warns that the limit changed under it, and warnings are errors.
    # Run alone, this module would be the first to import it there.
    import tensorflow  # noqa: F401

    # With MEDROBUST_API_TOKEN set, so the description's bearer security is checked as well.
    app = create_app(ServiceConfig(model_repo=tiny_repo.path, api_token=TOKEN), predictor=embedded_predictor)
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_description(case):
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"})
