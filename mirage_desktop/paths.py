"""Where Mirage keeps its files: settings, data (identities, models), caches. Each can be moved with
an environment variable (``MIRAGE_CONFIG_DIR``, ``MIRAGE_DATA_DIR``, ``MIRAGE_CACHE_DIR``,
``MIRAGE_MODELS_DIR``); otherwise the platform's user folders are used."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "mirage-desktop"


def config_dir() -> Path:
    return Path(os.environ.get("MIRAGE_CONFIG_DIR") or platformdirs.user_config_dir(APP_NAME))


def data_dir() -> Path:
    return Path(os.environ.get("MIRAGE_DATA_DIR") or platformdirs.user_data_dir(APP_NAME))


def cache_dir() -> Path:
    return Path(os.environ.get("MIRAGE_CACHE_DIR") or platformdirs.user_cache_dir(APP_NAME))


def models_dir() -> Path:
    return Path(os.environ.get("MIRAGE_MODELS_DIR") or (data_dir() / "models"))
