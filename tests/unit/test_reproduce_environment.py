"""The source revision a reproduction records: the commit, and whether the checkout was edited."""

import subprocess

from medrobust.reproduce_report import environment


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def _repo(tmp_path):
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.org")
    _git(tmp_path, "config", "user.name", "t")
    (tmp_path / "train.py").write_text("lr = 0.01\n")
    (tmp_path / "notes.txt").write_text("x\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "start")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    return head


def test_a_clean_checkout_records_its_commit_and_no_edits(tmp_path):
    head = _repo(tmp_path)
    (tmp_path / "untracked-output.json").write_text("{}")  # run outputs are not edits to the code

    env = environment(tmp_path)

    assert env["git_commit"] == head
    assert env["git_dirty"] == []
    assert env["packages"]["numpy"]


def test_an_edited_checkout_names_the_edited_files(tmp_path):
    head = _repo(tmp_path)
    (tmp_path / "train.py").write_text("lr = 0.001\n")

    env = environment(tmp_path)

    assert env["git_commit"] == head
    assert env["git_dirty"] == ["train.py"]


def test_outside_a_repository_both_are_unknown(tmp_path, monkeypatch):
    # Stop git's upward search at tmp_path, so a repository around the temp dir cannot answer.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))

    env = environment(tmp_path)

    assert env["git_commit"] is None
    assert env["git_dirty"] is None
