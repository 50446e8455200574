"""The orjson provider writes the documents Flask's default provider wrote."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid

import pytest
from flask import Flask
from flask.json.provider import DefaultJSONProvider

from service.json_provider import OrjsonProvider


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: float


DOCUMENTS = [
    {"model": "m", "probabilities": {"nevus": 0.25, "melanoma": 0.75}, "overlay_png": "iVBORw0KGgo" * 1000},
    {"zeta": 1, "alpha": [1, 2.5, None, True], "nested": {"b": 1, "a": 2}},
    {"when": dt.datetime(2026, 11, 29, 6, 30, tzinfo=dt.UTC), "day": dt.date(2026, 1, 2)},
    {"point": Point(1, 2.5), "id": uuid.UUID(int=7)},
    {"text": "naïve café — 皮膚"},
    {3: "int keys become strings"},
    [],
]


def _apps() -> tuple[Flask, Flask]:
    fast, default = Flask("fast"), Flask("default")
    fast.json = OrjsonProvider(fast)
    default.json = DefaultJSONProvider(default)
    return fast, default


@pytest.mark.parametrize("doc", DOCUMENTS, ids=range(len(DOCUMENTS)))
def test_same_document_as_flask_default(doc) -> None:
    fast, default = _apps()
    ours = fast.json.dumps(doc)
    theirs = default.json.dumps(doc)
    assert json.loads(ours) == json.loads(theirs)
    if isinstance(doc, dict):  # key order too (json.loads keeps it)
        assert list(json.loads(ours)) == list(json.loads(theirs))


@pytest.mark.parametrize("doc", DOCUMENTS, ids=range(len(DOCUMENTS)))
def test_response_matches_flask_default(doc) -> None:
    fast, default = _apps()
    with fast.app_context():
        ours = fast.json.response(doc)
    with default.app_context():
        theirs = default.json.response(doc)
    assert ours.mimetype == theirs.mimetype == "application/json"
    assert json.loads(ours.get_data()) == json.loads(theirs.get_data())
    if ours.get_data().isascii():  # only non-ASCII text is written differently (UTF-8, not \\u escapes)
        assert ours.get_data() == theirs.get_data()  # compact, sorted, newline-terminated


def test_dates_stay_http_dates() -> None:
    fast, _ = _apps()
    assert json.loads(fast.json.dumps({"d": dt.datetime(2026, 11, 29, tzinfo=dt.UTC)})) == {
        "d": "Sun, 29 Nov 2026 00:00:00 GMT"
    }


def test_debug_mode_indents() -> None:
    fast, _ = _apps()
    fast.debug = True
    with fast.app_context():
        body = fast.json.response({"b": 1, "a": 2}).get_data(as_text=True)
    assert body == '{\n  "a": 2,\n  "b": 1\n}\n'


def test_json_dumps_options_are_honoured() -> None:
    fast, _ = _apps()
    assert fast.json.dumps({"a": 1}, separators=(",", "=")) == '{"a"=1}'


def test_unserialisable_values_are_errors() -> None:
    fast, _ = _apps()
    with pytest.raises(TypeError):
        fast.json.dumps({"x": object()})


def test_the_service_answers_with_it(tmp_path) -> None:
    from medrobust.compose import build_app
    from training.contract.config import ServiceConfig

    app = build_app(ServiceConfig(model_repo=tmp_path))
    assert isinstance(app.json, OrjsonProvider)
    response = app.test_client().get("/api/v1/models")
    assert (response.status_code, response.data) == (200, b'{"models":[]}\n')
