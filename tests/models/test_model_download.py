"""The downloader against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import errno
import io
import json
import os
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from model_test_support import sha, write_toml
from mirage_desktop.errors import ModelError
from mirage_desktop.models import download as dl
from mirage_desktop.models import registry as regmod
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


def _pack(tmp_path, server, det_sha=None, rec_sha=None, **served_options):
    det, rec = os.urandom(5000), os.urandom(7000)
    server.add("/pack.zip", _zip({"pack/det.onnx": det, "pack/rec.onnx": rec, "pack/other.onnx": b"x"}),
               **served_options)
    archives = {"pack": {"url": server.url("/pack.zip"), "filename": "pack.zip", "sha256": "",
                         "size": 0, "license": "nc"}}
    models = {
        "det": {"filename": "det.onnx", "archive": "pack", "member": "det.onnx",
                "sha256": sha(det) if det_sha is None else det_sha, "size": len(det), "needed_by": ["detect"]},
        "rec": {"filename": "rec.onnx", "archive": "pack", "member": "rec.onnx",
                "sha256": sha(rec) if rec_sha is None else rec_sha,
                "size": len(rec) if rec_sha is None else 0, "needed_by": ["recognize"]},
    }
    return load_registry(write_toml(tmp_path / "models.toml", models, archives)), det, rec


def _pins(models_env) -> dict:
    path = models_env / "pins.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_archive_members_are_extracted_verified_and_archive_dropped(tmp_path, server, models_env):
    reg, det, rec = _pack(tmp_path, server)
    assert [s.name for s in reg.resolve("pack")] == ["det", "rec"]
    warnings = []
    path = dl.download(reg.get("det"), progress=False, on_warning=warnings.append)
    assert path.read_bytes() == det
    # the missing sibling came out of the same archive, checked against its own hash
    assert (models_env / "rec.onnx").read_bytes() == rec
    assert not (models_env / "pack.zip").exists()  # dropped once both were out
    # both models have confirmed hashes: they vouch for the archive, which is not pinned
    assert warnings == [] and "pack" not in _pins(models_env)
    dl.download(reg.get("rec"), progress=False, on_warning=warnings.append)
    assert len(server.files["/pack.zip"].requests) == 1  # the archive was downloaded once
    assert not list(models_env.glob("*.part"))
    assert status(reg.get("det")).state == status(reg.get("rec")).state == "present"


def test_archive_serving_an_unconfirmed_model_is_pinned(tmp_path, server, models_env):
    reg, det, rec = _pack(tmp_path, server, rec_sha="")
    warnings = []
    dl.download(reg.get("det"), progress=False, on_warning=warnings.append)
    assert any("pinned" in w and "pack.zip" in w for w in warnings)
    assert any("pinned" in w and "rec.onnx" in w and sha(rec) in w for w in warnings)
    pins = _pins(models_env)
    assert "pack" in pins and pins["rec"]["sha256"] == sha(rec)
    assert status(reg.get("rec")).state == "present"
    # upstream repacks rec: a forced download no longer matches the pins, and the
    # error names the fix that works (--repin), not --force
    server.files["/pack.zip"].body = _zip({"rec.onnx": b"new" + rec, "det.onnx": det})
    with pytest.raises(ModelError) as err:
        dl.download(reg.get("rec"), progress=False, force=True, on_warning=warnings.append)
    text = str(err.value)
    assert "pinned on first download" in text
    assert "mirage models download --repin rec" in text and "--force" not in text
    assert (models_env / "rec.onnx").read_bytes() == rec  # the good file is untouched


def test_archive_member_mismatch_is_not_kept(tmp_path, server, models_env):
    reg, _det, _rec = _pack(tmp_path, server, det_sha="0" * 64)
    with pytest.raises(ModelError) as err:
        dl.download(reg.get("det"), progress=False, on_warning=lambda m: None)
    text = str(err.value)
    assert "sha256 mismatch" in text and "MIRAGE_DET_URL" in text
    assert not (models_env / "det.onnx").exists()
    assert not list(models_env.glob("*.part"))
    assert not (models_env / "pack.zip").exists()
    assert "pack" not in _pins(models_env)


def test_archive_member_mismatch_forgets_the_archive_pin(tmp_path, server, models_env):
    reg, _det, _rec = _pack(tmp_path, server, det_sha="0" * 64, rec_sha="")
    with pytest.raises(ModelError, match="sha256 mismatch"):
        dl.download(reg.get("det"), progress=False, on_warning=lambda m: None)
    assert not (models_env / "pack.zip").exists()
    # the archive's pin was only as good as its members: it is forgotten
    assert "pack" not in _pins(models_env)


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


# ---------------------------------------------------------------------------- review fixes

def test_two_members_of_one_archive_at_once_share_one_download(tmp_path, server, models_env):
    # det and rec come from the same pack.zip: downloading both at once (GUI and a
    # worker, two threads) must not fetch into the same .part twice
    reg, det, rec = _pack(tmp_path, server, delay=0.02)
    results = {}

    def go(name):
        try:
            results[name] = dl.download(reg.get(name), progress=False, on_warning=lambda m: None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[name] = exc

    threads = [threading.Thread(target=go, args=(n,)) for n in ("det", "rec")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == {"det": models_env / "det.onnx", "rec": models_env / "rec.onnx"}
    assert (models_env / "det.onnx").read_bytes() == det
    assert (models_env / "rec.onnx").read_bytes() == rec
    assert len(server.files["/pack.zip"].requests) == 1
    assert not list(models_env.glob("*.part")) and not (models_env / "pack.zip").exists()


_HOLD_LOCK = """
import fcntl, sys
fh = open(sys.argv[1], "a+")
fcntl.flock(fh, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.mark.skipif(os.name == "nt", reason="the helper process uses fcntl")
@pytest.mark.parametrize("what", ["file", "archive member"])
def test_download_waits_while_another_process_downloads_the_same_file(tmp_path, server, models_env, what):
    if what == "file":
        spec = _spec(tmp_path, server)
        served, lock, want = server.files["/m.onnx"], models_env / ".swapper.onnx.lock", BODY
    else:
        reg, want, _rec = _pack(tmp_path, server)
        spec = reg.get("det")
        served, lock = server.files["/pack.zip"], models_env / ".pack.zip.lock"
    models_env.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(lock)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "locked"
        warnings, results = [], []
        waiting = threading.Event()

        def warn(message):
            warnings.append(message)
            if "another Mirage process" in message:
                waiting.set()

        t = threading.Thread(target=lambda: results.append(
            dl.download(spec, progress=False, on_warning=warn)))
        t.start()
        assert waiting.wait(30)  # it saw the other process's lock...
        assert t.is_alive() and served.requests == []  # ...and waits, not racing it
        other.stdin.close()  # the other process finishes
        other.wait(5)
        t.join(10)
        assert results == [model_path(spec)] and model_path(spec).read_bytes() == want
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()


@pytest.mark.skipif(os.name == "nt", reason="the helper process uses fcntl")
def test_cancel_while_waiting_for_another_process(tmp_path, server, models_env):
    spec = _spec(tmp_path, server)
    models_env.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(models_env / ".swapper.onnx.lock")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "locked"
        cancel = threading.Event()

        def warn(message):  # told it waits for the other process: cancel now
            if "another Mirage process" in message:
                cancel.set()

        with pytest.raises(dl.DownloadCancelled):
            dl.download(spec, progress=False, cancel_event=cancel, on_warning=warn)
        assert server.files["/m.onnx"].requests == []
    finally:
        other.stdin.close()
        other.wait(5)


def test_sha256_override_for_another_export_does_not_enforce_the_old_size(tmp_path, server, models_env,
                                                                          monkeypatch):
    # models.toml: "for FaceFusion's export set MIRAGE_..._SHA256 as well as the URL"
    other = os.urandom(len(BODY) + 191)
    spec = _spec(tmp_path, server)
    server.add("/export.onnx", other)
    monkeypatch.setenv("MIRAGE_SWAPPER_URL", server.url("/export.onnx"))
    monkeypatch.setenv("MIRAGE_SWAPPER_SHA256", sha(other))
    spec = load_registry(tmp_path / "models.toml").get("swapper")
    assert spec.sha256 == sha(other) and spec.size is None
    assert dl.download(spec, progress=False).read_bytes() == other
    assert status(spec).state == "present"
    # with MIRAGE_<NAME>_SIZE the size is checked again
    monkeypatch.setenv("MIRAGE_SWAPPER_SIZE", str(len(other) + 1))
    spec = load_registry(tmp_path / "models.toml").get("swapper")
    assert spec.size == len(other) + 1
    assert status(spec).state == "corrupt"


def test_malformed_url_is_a_model_error(tmp_path, server, models_env, monkeypatch):
    # passes the scheme check, but requests refuses it (port out of range)
    monkeypatch.setenv("MIRAGE_SWAPPER_URL", "http://127.0.0.1:99999/m.onnx")
    _spec(tmp_path, server)
    spec = load_registry(tmp_path / "models.toml").get("swapper")
    with pytest.raises(ModelError) as err:
        dl.download(spec, progress=False)
    assert "127.0.0.1:99999" in str(err.value) and "MIRAGE_SWAPPER_URL" in str(err.value)


@pytest.mark.parametrize("known_size", [True, False])
def test_server_that_caps_ranges_is_followed_to_the_end(tmp_path, server, models_env, monkeypatch, known_size):
    # the first answer drops half-way; every resume is answered with at most 30 kB
    monkeypatch.setattr(dl, "RETRIES", 1)  # the capped answers are not failed attempts
    spec = _spec(tmp_path, server, mode="drop_once", size=None if known_size else 0)
    served = server.files["/m.onnx"]
    served.cap = 30_000
    assert dl.download(spec, progress=False).read_bytes() == BODY
    reqs = served.requests
    assert len(reqs) > 3 and reqs[0] is None
    starts = [int(r[len("bytes="):-1]) for r in reqs[1:]]
    assert starts == sorted(starts) and all(b - a == 30_000 for a, b in zip(starts[1:], starts[2:]))
    assert status(spec).state == "present"


def test_cancel_does_not_wait_for_a_stalled_connection(tmp_path, server, models_env):
    # the stall timeout is long: had the cancel waited for it, the download would end with
    # the stall error, not DownloadCancelled (no wall-clock assert needed)
    spec = _spec(tmp_path, server, mode="stall")
    cancel = threading.Event()

    def on_progress(done, total):
        if done >= 1000:  # the server's first bytes are in; it stalls from here
            cancel.set()

    with pytest.raises(dl.DownloadCancelled):
        dl.download(spec, progress=False, cancel_event=cancel, on_progress=on_progress,
                    stall_timeout=120.0)
    assert (models_env / "swapper.onnx.part").exists()  # kept to resume


def test_force_on_a_pack_downloads_the_archive_once(tmp_path, server, models_env):
    reg, det, rec = _pack(tmp_path, server)
    for spec in reg.resolve("pack"):
        dl.download(spec, progress=False)
    assert len(server.files["/pack.zip"].requests) == 1
    # `mirage models download --force pack`, or the GUI re-downloading both
    (models_env / "rec.onnx").write_bytes(b"x" * len(rec))
    for spec in reg.resolve("pack"):
        dl.download(spec, progress=False, force=True)
    assert len(server.files["/pack.zip"].requests) == 2
    assert (models_env / "det.onnx").read_bytes() == det
    assert (models_env / "rec.onnx").read_bytes() == rec
    assert not (models_env / "pack.zip").exists()


def test_repacked_mirror_of_a_confirmed_pack_is_accepted(tmp_path, server, models_env, monkeypatch):
    reg, det, rec = _pack(tmp_path, server)
    dl.download(reg.get("det"), progress=False)
    (models_env / "det.onnx").write_bytes(b"x" * len(det))  # det gets damaged later
    # the original is gone; a mirror serves the same files in another zip
    server.add("/mirror/pack.zip", _zip({"buffalo/rec.onnx": rec, "buffalo/det.onnx": det}))
    monkeypatch.setenv("MIRAGE_PACK_URL", server.url("/mirror/pack.zip"))
    reg = load_registry(reg.source)
    assert dl.download(reg.get("det"), progress=False, force=True).read_bytes() == det
    assert status(reg.get("det")).state == "present"


def test_pin_mismatch_names_repin_as_the_fix(tmp_path, server, models_env):
    spec = _spec(tmp_path, server, sha256="", size=0)
    dl.download(spec, progress=False, on_warning=lambda m: None)
    server.files["/m.onnx"].mode = "wrong"
    with pytest.raises(ModelError) as err:
        dl.download(spec, progress=False, force=True)
    text = str(err.value)
    assert "pinned on first download" in text and "mirage models download --repin swapper" in text
    assert "--force" not in text


def _full_disk_for_pins(monkeypatch, key=None):
    """Writing pins.json (with ``key`` in it, if given) fails: the disk is full."""
    real = regmod.atomic_write_text

    def write(path, text, what=""):
        if Path(path).name == regmod.PINS_FILE and (key is None or f'"{key}"' in text):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, text, what)

    monkeypatch.setattr(regmod, "atomic_write_text", write)


def test_full_disk_while_pinning_is_a_model_error_and_installs_nothing(tmp_path, server, models_env,
                                                                       monkeypatch):
    spec = _spec(tmp_path, server, sha256="", size=0)
    _full_disk_for_pins(monkeypatch)
    with pytest.raises(dl.DownloadWriteError) as err:
        dl.download(spec, progress=False, on_warning=lambda m: None)
    assert str(err.value).startswith(f"cannot write pins file {models_env / 'pins.json'}: the disk is full")
    assert "swapper.onnx was not installed" in str(err.value) and "MIRAGE_MODELS_DIR" in str(err.value)
    assert not model_path(spec).exists()  # nothing in place that no pin vouches for
    assert not list(models_env.glob("*.part")) and not list(models_env.glob("*.tmp"))
    assert status(spec).state == "missing"
    monkeypatch.undo()
    monkeypatch.setenv("MIRAGE_MODELS_DIR", str(models_env))
    dl.download(spec, progress=False, on_warning=lambda m: None)  # space freed: completes
    assert status(spec).state == "present"


def test_full_disk_while_pinning_an_archive_member(tmp_path, server, models_env, monkeypatch):
    reg, _det, _rec = _pack(tmp_path, server, det_sha="")
    _full_disk_for_pins(monkeypatch, key="det")  # the archive's pin still fits, det's not
    with pytest.raises(ModelError, match="cannot write pins file .*: the disk is full"):
        dl.download(reg.get("det"), progress=False, on_warning=lambda m: None)
    assert not (models_env / "det.onnx").exists()
    assert not (models_env / "det.onnx.part").exists()
    assert "det" not in _pins(models_env)
