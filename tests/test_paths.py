"""Data-dir resolution: config, env var, ../shared/data, download, clear error."""

import pytest

from prune_lit.data import paths


def test_explicit_dir_wins(tmp_path, monkeypatch):
    (tmp_path / "zsre").mkdir()
    f = tmp_path / "zsre" / "x.json"
    f.write_text("[]")
    monkeypatch.setenv(paths.ENV_VAR, "/nonexistent")
    assert paths.resolve_data_file("zsre/x.json", tmp_path) == f


def test_env_var_is_used(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("x")
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path))
    assert paths.resolve_data_file("a.txt") == tmp_path / "a.txt"


def test_shared_data_beside_checkout_is_found(monkeypatch):
    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    found = paths.resolve_data_file("counterfact/counterfact-edit.json", download=False)
    assert found.name == "counterfact-edit.json" and found.stat().st_size > 1_000_000


def test_missing_file_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNE_LIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(paths.DataNotFoundError, match="PRUNE_DATA_DIR"):
        paths.resolve_data_file("nope/missing.json", tmp_path)
    with pytest.raises(paths.DataNotFoundError, match="does not exist"):
        paths.resolve_data_file("nope/missing.json", tmp_path / "absent")


def test_failed_download_is_reported_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNE_LIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(paths, "candidate_dirs", lambda data_dir=None: [tmp_path])
    monkeypatch.setitem(paths.PUBLIC_URLS, "zsre/x.json", "http://127.0.0.1:9/unreachable.json")
    with pytest.raises(paths.DataNotFoundError, match="download from"):
        paths.resolve_data_file("zsre/x.json")
    assert not list((tmp_path / "cache").rglob("x.json*"))
