"""`medrobust up` keeps the admin token it makes: the same token on every start, in a file only its
owner can read; a token the user set wins and is written nowhere."""

from __future__ import annotations

import stat

import pytest

from medrobust.admin_token import TOKEN_FILE, keep_admin_token
from medrobust.cli import main
from training.contract.config import ServiceConfig


@pytest.fixture
def start_up(tmp_path, monkeypatch):
    """`medrobust up` up to gunicorn (training and gunicorn stubbed); returns the front end's config of each start."""
    import medrobust.web_server
    from medrobust.commands import up

    for name in ("ADMIN_TOKEN", "API_TOKEN", "HOST", "WORKDIR", "MODEL_REPO", "AUDIT_DATASET"):
        monkeypatch.delenv(f"MEDROBUST_{name}", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(up, "_in_child", lambda target, **kwargs: 0)
    monkeypatch.setattr("medrobust.ports.check_free", lambda *listens: None)
    served: list[ServiceConfig] = []
    monkeypatch.setattr(medrobust.web_server, "run_gunicorn", lambda config, *a, **k: served.append(config) or 0)

    def start() -> ServiceConfig:
        assert main(["up", "--dataset", "synthetic:30"]) == 0
        return served[-1]

    return start


def test_two_starts_serve_the_same_kept_token(start_up, tmp_path):
    first, second = start_up(), start_up()
    kept = tmp_path / ".medrobust" / TOKEN_FILE
    assert first.admin_token and second.admin_token == first.admin_token
    assert kept.read_text() == first.admin_token + "\n"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600


def test_the_state_folder_follows_medrobust_workdir(start_up, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDROBUST_WORKDIR", str(tmp_path / "state"))
    token = start_up().admin_token
    assert (tmp_path / "state" / TOKEN_FILE).read_text().strip() == token


def test_a_token_the_user_set_wins_and_is_never_written(start_up, tmp_path, monkeypatch):
    first = start_up().admin_token
    monkeypatch.setenv("MEDROBUST_ADMIN_TOKEN", "chosen-by-me")
    assert start_up().admin_token == "chosen-by-me"
    assert (tmp_path / ".medrobust" / TOKEN_FILE).read_text().strip() == first  # the kept one untouched
    assert "chosen-by-me" not in "".join(p.read_text() for p in (tmp_path / ".medrobust").rglob("*") if p.is_file())


def test_a_user_token_with_no_kept_one_writes_nothing(tmp_path):
    assert keep_admin_token("mine", tmp_path / "state").token == "mine"
    assert not (tmp_path / "state").exists()


def test_a_kept_file_others_could_read_is_narrowed_to_0600(tmp_path, caplog):
    kept = tmp_path / TOKEN_FILE
    kept.write_text("old-token\n")
    kept.chmod(0o644)
    assert keep_admin_token(None, tmp_path).token == "old-token"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert "was readable by others" in caplog.text


def test_an_empty_kept_file_is_replaced_by_a_new_token(tmp_path):
    (tmp_path / TOKEN_FILE).write_text("")
    kept = keep_admin_token(None, tmp_path)
    assert kept.token and (tmp_path / TOKEN_FILE).read_text() == kept.token + "\n"
    assert stat.S_IMODE((tmp_path / TOKEN_FILE).stat().st_mode) == 0o600
