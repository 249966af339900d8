"""`mirage models ...` through the real entry point, mirage_desktop.cli.main."""

from __future__ import annotations

import io
import sys

import pytest

import mirage_desktop.cli as top
from model_test_support import sha, write_toml

BODY = b"model-bytes" * 5000
OTHER = b"other-bytes" * 300


@pytest.fixture
def cli_env(tmp_path, models_env, server, monkeypatch):
    # Only the `models` subcommand: the other subcommands' modules belong to other work.
    monkeypatch.setattr(top, "COMMANDS", {"models": top.COMMANDS["models"]})
    server.add("/good.onnx", BODY)
    server.add("/other.onnx", OTHER)
    toml = write_toml(tmp_path / "models.toml", {
        "good": {"filename": "good.onnx", "url": server.url("/good.onnx"), "sha256": sha(BODY),
                 "size": len(BODY), "needed_by": ["detect"]},
        "broken": {"filename": "broken.onnx", "url": server.url("/other.onnx"), "sha256": sha(OTHER),
                   "size": len(OTHER), "license": "free", "needed_by": ["enhance_gfpgan"]},
        "absent": {"filename": "absent.onnx", "url": server.url("/absent.onnx"), "sha256": "b" * 64,
                   "size": 10, "needed_by": ["swap"]},
    })
    monkeypatch.setenv("MIRAGE_MODELS_TOML", str(toml))
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # no TTY
    return models_env


def test_status_shows_state_size_and_licence(cli_env, capsys):
    cli_env.mkdir(parents=True)
    (cli_env / "good.onnx").write_bytes(BODY)
    (cli_env / "broken.onnx").write_bytes(b"x" * len(OTHER))
    assert top.main(["models", "status"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line and not line[0].isspace()}
    assert "present" in lines["good"] and "55.0 KB" in lines["good"] and "nc (not for commercial use)" in lines["good"]
    assert "corrupt" in lines["broken"] and "free" in lines["broken"]
    assert "missing" in lines["absent"]
    assert "sha256 mismatch" in out
    assert "Test licence: non-commercial research only" in out
    assert str(cli_env) in out


def test_download_refuses_non_commercial_without_yes_when_not_a_tty(cli_env, server, capsys):
    rc = top.main(["models", "download", "good"])
    captured = capsys.readouterr()
    assert rc == 2
    assert "--yes" in captured.err and "non-commercial" in captured.err
    assert "Test licence" in captured.out
    assert server.files["/good.onnx"].requests == []
    assert not (cli_env / "good.onnx").exists()


def test_download_with_yes_then_verify(cli_env, server, capsys):
    assert top.main(["models", "download", "--yes", "--no-progress", "good"]) == 0
    assert (cli_env / "good.onnx").read_bytes() == BODY
    assert "good: ok" in capsys.readouterr().out
    # a commercially usable model needs no confirmation
    assert top.main(["models", "download", "--no-progress", "broken"]) == 0
    assert top.main(["models", "verify"]) == 0
    out = capsys.readouterr().out
    assert "good: present" in out and "broken: present" in out
    (cli_env / "broken.onnx").write_bytes(b"y" * len(OTHER))
    assert top.main(["models", "verify"]) == 1
    out = capsys.readouterr().out
    assert "broken: corrupt" in out and "mirage models download --force broken" in out


def test_download_needed_follows_settings(cli_env, server, capsys, monkeypatch):
    # default settings: swap on, enhancer off -> detect, recognize, swap
    assert top.main(["models", "download", "--needed", "--yes", "--no-progress"]) == 2
    assert (cli_env / "good.onnx").exists()          # detect
    assert server.files["/other.onnx"].requests == []  # enhance_gfpgan: not needed
    assert "absent" in capsys.readouterr().err       # swap: its download failed (404)


def test_missing_name_is_a_clear_error(cli_env, capsys):
    assert top.main(["models", "download"]) == 2
    assert "--needed" in capsys.readouterr().err
    assert top.main(["models", "download", "--yes", "nope"]) == 2
    assert "known models: good, broken, absent" in capsys.readouterr().err


@pytest.fixture
def pack_env(tmp_path, models_env, server, monkeypatch):
    """A pack of two models with no confirmed hashes (so everything is pinned)."""
    import zipfile

    monkeypatch.setattr(top, "COMMANDS", {"models": top.COMMANDS["models"]})
    det, rec = b"det-weights" * 400, b"rec-weights" * 600

    def serve(det_body, rec_body):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("pack/det.onnx", det_body)
            zf.writestr("pack/rec.onnx", rec_body)
        return server.add("/pack.zip", buf.getvalue())

    served = serve(det, rec)
    toml = write_toml(tmp_path / "models.toml", {
        "det": {"filename": "det.onnx", "archive": "pack", "member": "det.onnx", "sha256": "", "size": 0},
        "rec": {"filename": "rec.onnx", "archive": "pack", "member": "rec.onnx", "sha256": "", "size": 0},
    }, {"pack": {"url": server.url("/pack.zip"), "filename": "pack.zip", "sha256": "", "size": 0,
                 "license": "nc"}})
    monkeypatch.setenv("MIRAGE_MODELS_TOML", str(toml))
    return models_env, served, serve, det, rec


def test_download_force_of_a_pack_fetches_the_archive_once(pack_env, capsys):
    mdir, served, _serve, det, rec = pack_env
    assert top.main(["models", "download", "--yes", "--no-progress", "pack"]) == 0
    assert len(served.requests) == 1
    assert top.main(["models", "download", "--force", "--yes", "--no-progress", "pack"]) == 0
    assert len(served.requests) == 2
    out = capsys.readouterr().out
    assert "det: ok" in out and "rec: ok" in out
    assert (mdir / "det.onnx").read_bytes() == det and (mdir / "rec.onnx").read_bytes() == rec


def test_download_repin_of_a_pack_fetches_once_and_pins_the_new_files(pack_env, capsys):
    import json

    mdir, _served, serve, det, rec = pack_env
    assert top.main(["models", "download", "--yes", "--no-progress", "pack"]) == 0
    # upstream publishes new weights: --repin trusts them
    served = serve(b"new" + det, b"new" + rec)
    assert top.main(["models", "download", "--repin", "--yes", "--no-progress", "pack"]) == 0
    assert len(served.requests) == 1
    pins = json.loads((mdir / "pins.json").read_text())
    assert pins["det"]["sha256"] == sha(b"new" + det) and pins["rec"]["sha256"] == sha(b"new" + rec)
    assert top.main(["models", "verify", "det", "rec"]) == 0
