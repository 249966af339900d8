"""The files the app writes outside the commands' own outputs: saved identities, the settings file and
the crash log. Each unwritable place (read-only, full, a folder, a file in the way) is one clear error,
or for the crash log a fallback line, and nothing half-written is left."""

from __future__ import annotations

import numpy as np
import pytest

from mirage_desktop import config
from mirage_desktop.cli import main
from mirage_desktop.errors import WriteError
from mirage_desktop.vision.identity import IdentityStore, SourceIdentity


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".") and ".filler" not in p.name] \
        if folder.is_dir() else []


def test_a_saved_identity_that_cannot_be_written_is_one_error(unwritable_target):
    path, words = unwritable_target
    if path.is_dir():  # the store's root is a folder anyway: Eileen's embedding file's name is taken by one
        (path / "Eileen" / "embedding.npy").mkdir(parents=True)
        (path / "Eileen" / "meta.json").write_text('{"name": "Eileen"}')
    e = np.zeros(512, np.float32)
    e[0] = 1.0
    with pytest.raises(WriteError) as err:
        IdentityStore(path).save(SourceIdentity("Eileen", e, [], None, True))
    assert words in str(err.value) and "saved identity" in str(err.value)
    assert _leftovers(path.parent) == []


def test_a_settings_file_that_cannot_be_written_is_one_error(unwritable_target):
    path, words = unwritable_target
    with pytest.raises(WriteError) as err:
        config.save(config.Settings(max_faces=2), path)
    assert words in str(err.value)
    assert _leftovers(path.parent) == []


def test_a_crash_log_that_cannot_be_written_still_gives_one_line(unwritable_target, monkeypatch, capsys):
    import mirage_desktop.commands.devices as devices

    path, _ = unwritable_target
    if path.is_dir():  # the cache dir is a folder anyway: its crash/ folder's name is taken by a file
        (path / "crash").write_text("x")
    monkeypatch.setenv("MIRAGE_CACHE_DIR", str(path))

    def broken(args):
        raise ValueError("a bug")

    monkeypatch.setattr(devices, "run", broken)
    assert main(["devices"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "internal error: ValueError: a bug" in lines[0] and "-vv" in lines[0]
