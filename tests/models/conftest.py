"""Fixtures for tests/models (helpers live in model_test_support.py)."""

from __future__ import annotations

import os

import pytest

from model_test_support import ModelServer


@pytest.fixture
def server():
    srv = ModelServer()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def models_env(tmp_path, monkeypatch):
    """An empty models dir, no URL overrides from the outside, instant retries."""
    from mirage_desktop.models import download as dl

    for key in list(os.environ):
        if key.startswith("MIRAGE_") and (key.endswith(("_URL", "_SHA256", "_SIZE"))
                                          or key == "MIRAGE_MODELS_TOML"):
            monkeypatch.delenv(key, raising=False)
    mdir = tmp_path / "models"
    monkeypatch.setenv("MIRAGE_MODELS_DIR", str(mdir))
    monkeypatch.setenv("MIRAGE_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("MIRAGE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(dl, "BACKOFF", (0.0,))
    monkeypatch.setattr(dl, "CHUNK", 16 * 1024)
    monkeypatch.setattr(dl, "STALL_TIMEOUT", 5.0)
    monkeypatch.setattr(dl, "CONNECT_TIMEOUT", 5.0)
    return mdir


