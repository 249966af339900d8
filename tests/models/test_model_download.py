"""The downloader against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import zipfile

import pytest

from model_test_support import sha, write_toml
from mirage_desktop.errors import ModelError
from mirage_desktop.models import download as dl
from mirage_desktop.models.registry import load_registry, model_path, require, status

BODY = os.urandom(200_000)


def _spec(tmp_path, server, *, name="swapper", path="/m.onnx", mode="good", sha256=None,
          size=None, body=BODY, url=None):
    server.add(path, body, mode)
    table = {"filename": f"{name}.onnx", "url": url or server.url(path),
             "sha256": sha(body) if sha256 is None else sha256,
             "size": len(body) if size is None else size}
    reg = load_registry(write_toml(tmp_path / "models.toml", {name: table}))
    return reg.get(name)


def test_good_file_is_downloaded_verified_and_placed(tmp_path, server, models_env):
    spec = _spec(tmp_path, server)
    seen = []
    path = dl.download(spec, progress=False, on_progress=lambda d, t: seen.append((d, t)))
    assert path == models_env / "swapper.onnx"
    assert path.read_bytes() == BODY
    assert not (models_env / "swapper.onnx.part").exists()
    assert seen[-1] == (len(BODY), len(BODY))
    assert status(spec).state == "present"
    assert require(spec) == path
    # already present: no second request
    dl.download(spec, progress=False)
    assert len(server.files["/m.onnx"].requests) == 1


def test_wrong_hash_deletes_the_file_and_names_the_fix(tmp_path, server, models_env):
    spec = _spec(tmp_path, server, mode="wrong")
    with pytest.raises(ModelError) as err:
        dl.download(spec, progress=False)
    text = str(err.value)
    assert "sha256 mismatch" in text and "deleted" in text
    assert "mirage models download --force swapper" in text
    assert "\n" not in text
    assert not model_path(spec).exists()
    assert not (models_env / "swapper.onnx.part").exists()
    with pytest.raises(ModelError, match="swapper is missing — run `mirage models download swapper`"):
        require(spec)


@pytest.mark.parametrize("known_size", [True, False])
def test_truncated_body_is_rejected_and_not_kept(tmp_path, server, models_env, known_size):
    spec = _spec(tmp_path, server, mode="truncate", size=None if known_size else 0)
    with pytest.raises(ModelError) as err:
        dl.download(spec, progress=False)
    text = str(err.value)
    assert ("truncated" in text) if known_size else ("sha256 mismatch" in text)
    assert not model_path(spec).exists()
    assert not (models_env / "swapper.onnx.part").exists()
    assert status(spec).state == "missing"


def test_dropped_connection_is_resumed_with_range(tmp_path, server, models_env):
    spec = _spec(tmp_path, server, mode="drop_once")
    path = dl.download(spec, progress=False)
    reqs = server.files["/m.onnx"].requests
    assert len(reqs) == 2
    assert reqs[0] is None
    assert reqs[1] is not None and reqs[1].startswith("bytes=")
    resumed_at = int(reqs[1][len("bytes="):-1])
    assert 0 < resumed_at < len(BODY)
    assert path.read_bytes() == BODY
    assert status(spec).state == "present"


def test_failed_download_keeps_part_and_next_run_resumes(tmp_path, server, models_env, monkeypatch):
    monkeypatch.setattr(dl, "RETRIES", 1)
    spec = _spec(tmp_path, server, mode="drop_always")
    with pytest.raises(ModelError, match="again to resume"):
        dl.download(spec, progress=False)
    part = models_env / "swapper.onnx.part"
    assert part.exists() and 0 < part.stat().st_size < len(BODY)
    assert not model_path(spec).exists()
    assert status(spec).state == "missing" and "partial" in status(spec).detail
    with pytest.raises(ModelError, match="missing"):
        require(spec)  # a .part is never returned
    have = part.stat().st_size
    server.files["/m.onnx"].mode = "good"
    dl.download(spec, progress=False)
    assert server.files["/m.onnx"].requests[-1] == f"bytes={have}-"
    assert model_path(spec).read_bytes() == BODY


def test_cancel_keeps_the_part_file(tmp_path, server, models_env):
    spec = _spec(tmp_path, server)
    cancel = threading.Event()

    def on_progress(done, total):
        if done > 0:
            cancel.set()

    with pytest.raises(dl.DownloadCancelled):
        dl.download(spec, progress=False, cancel_event=cancel, on_progress=on_progress)
    assert not model_path(spec).exists()
    assert (models_env / "swapper.onnx.part").exists()


def test_env_url_override(tmp_path, server, models_env, monkeypatch):
    # models.toml points at a path the server does not have; the env var fixes it
    server.add("/mirror.onnx", BODY)
    spec_path = write_toml(tmp_path / "models.toml", {"swapper": {
        "filename": "swapper.onnx", "url": server.url("/gone.onnx"), "sha256": sha(BODY), "size": len(BODY)}})
    with pytest.raises(ModelError) as err:
        dl.download(load_registry(spec_path).get("swapper"), progress=False)
    assert "HTTP 404" in str(err.value) and "MIRAGE_SWAPPER_URL" in str(err.value)
    monkeypatch.setenv("MIRAGE_SWAPPER_URL", server.url("/mirror.onnx"))
    spec = load_registry(spec_path).get("swapper")
    assert spec.url == server.url("/mirror.onnx") and spec.url_overridden
    assert dl.download(spec, progress=False).read_bytes() == BODY
    assert len(server.files["/mirror.onnx"].requests) == 1


def test_connection_failure_names_url_and_override(tmp_path, server, models_env, monkeypatch):
    monkeypatch.setattr(dl, "RETRIES", 0)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    url = f"http://127.0.0.1:{port}/m.onnx"
    spec = _spec(tmp_path, server, url=url)
    with pytest.raises(ModelError) as err:
        dl.download(spec, progress=False)
    text = str(err.value)
    assert url in text and "MIRAGE_SWAPPER_URL" in text and "connection refused" in text


def test_unconfirmed_hash_is_pinned_on_first_download(tmp_path, server, models_env, capsys):
    spec = _spec(tmp_path, server, sha256="", size=0)
    assert spec.sha256 is None
    dl.download(spec, progress=False)
    err = capsys.readouterr().err
    assert "WARNING" in err and "pinned" in err and sha(BODY) in err
    pins = json.loads((models_env / "pins.json").read_text())
    assert pins["swapper"]["sha256"] == sha(BODY)
    st = status(spec)
    assert st.state == "present" and "pinned" in st.detail
    # the upstream file changes: a forced re-download must match the pin
    server.files["/m.onnx"].mode = "wrong"
    with pytest.raises(ModelError, match="pinned on first download"):
        dl.download(spec, progress=False, force=True)
    # the mismatching file was not put in place: the good one is untouched
    assert model_path(spec).read_bytes() == BODY
    assert not (models_env / "swapper.onnx.part").exists()
    # ...and the pinned hash still stands
    assert json.loads((models_env / "pins.json").read_text())["swapper"]["sha256"] == sha(BODY)


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _pack(tmp_path, server, det_sha=None):
    det, rec = os.urandom(5000), os.urandom(7000)
    server.add("/pack.zip", _zip({"pack/det.onnx": det, "pack/rec.onnx": rec, "pack/other.onnx": b"x"}))
    archives = {"pack": {"url": server.url("/pack.zip"), "filename": "pack.zip", "sha256": "",
                         "size": 0, "license": "nc"}}
    models = {
        "det": {"filename": "det.onnx", "archive": "pack", "member": "det.onnx",
                "sha256": det_sha or sha(det), "size": len(det), "needed_by": ["detect"]},
        "rec": {"filename": "rec.onnx", "archive": "pack", "member": "rec.onnx",
                "sha256": sha(rec), "size": len(rec), "needed_by": ["recognize"]},
    }
    return load_registry(write_toml(tmp_path / "models.toml", models, archives)), det, rec


def test_archive_members_are_extracted_verified_and_archive_pinned(tmp_path, server, models_env):
    reg, det, rec = _pack(tmp_path, server)
    assert [s.name for s in reg.resolve("pack")] == ["det", "rec"]
    warnings = []
    path = dl.download(reg.get("det"), progress=False, on_warning=warnings.append)
    assert path.read_bytes() == det
    assert any("pinned" in w and "pack.zip" in w for w in warnings)
    assert "pack" in json.loads((models_env / "pins.json").read_text())
    assert (models_env / "pack.zip").exists()  # kept: rec still needs it
    dl.download(reg.get("rec"), progress=False, on_warning=warnings.append)
    assert (models_env / "rec.onnx").read_bytes() == rec
    assert len(server.files["/pack.zip"].requests) == 1  # the archive was reused
    assert not (models_env / "pack.zip").exists()  # and dropped once both were out
    assert not list(models_env.glob("*.part"))
    assert status(reg.get("det")).state == status(reg.get("rec")).state == "present"


def test_archive_member_mismatch_is_not_kept(tmp_path, server, models_env):
    reg, _det, _rec = _pack(tmp_path, server, det_sha="0" * 64)
    with pytest.raises(ModelError) as err:
        dl.download(reg.get("det"), progress=False, on_warning=lambda m: None)
    text = str(err.value)
    assert "sha256 mismatch" in text and "MIRAGE_DET_URL" in text
    assert not (models_env / "det.onnx").exists()
    assert not list(models_env.glob("*.part"))
    assert not (models_env / "pack.zip").exists()
    # the archive's pin was only as good as its members: it is forgotten
    assert "pack" not in json.loads((models_env / "pins.json").read_text())


def test_member_url_override_makes_a_direct_download(tmp_path, server, models_env, monkeypatch):
    reg, det, _rec = _pack(tmp_path, server)
    server.add("/det.onnx", det)
    monkeypatch.setenv("MIRAGE_DET_URL", server.url("/det.onnx"))
    reg = load_registry(reg.source)
    spec = reg.get("det")
    assert spec.archive is None and spec.url == server.url("/det.onnx")
    assert [s.name for s in reg.resolve("pack")] == ["det", "rec"]
    dl.download(spec, progress=False)
    assert (models_env / "det.onnx").read_bytes() == det
    assert server.files["/pack.zip"].requests == []
