"""Downloads never fill the disk, never hang, and every write failure is one line.

Driven through the real downloader and the real ``mirage models download`` (``cli.main``)
against a local HTTP server on 127.0.0.1 that sends too much, a zip bomb, a member whose
header lies, or nothing at all; and into places that cannot be written (the shared
``unwritable_target`` / ``full_dir`` fixtures). Each test checks the line the user sees,
the exit code, and that no partial, temporary or oversized file is left.
"""

from __future__ import annotations

import io
import re
import os
import struct
import sys
import zipfile
import zlib

import pytest

import mirage_desktop.cli as top
from model_test_support import sha, write_toml
from mirage_desktop.errors import ModelError, WriteError
from mirage_desktop.models import download as dl
from mirage_desktop.models.registry import load_registry, model_path, status

BODY = os.urandom(200_000)


@pytest.fixture
def cli(monkeypatch, models_env):
    """Run ``mirage ARGS`` in this process (only the models subcommand); returns (rc, err)."""
    monkeypatch.setattr(top, "COMMANDS", {"models": top.COMMANDS["models"]})
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # no TTY: licences need --yes

    def run(capsys, *args):
        rc = top.main(["models", *args])
        return rc, capsys.readouterr().err

    return run


def _registry(tmp_path, monkeypatch, models: dict, archives: dict | None = None):
    toml = write_toml(tmp_path / "models.toml", models, archives)
    monkeypatch.setenv("MIRAGE_MODELS_TOML", str(toml))
    return load_registry(toml)


def _one_model(tmp_path, monkeypatch, server, *, body=BODY, size=None, sha256=None, filename="swapper.onnx",
               **served):
    server.add("/m.onnx", body, **served)
    reg = _registry(tmp_path, monkeypatch, {"swapper": {
        "filename": filename, "url": server.url("/m.onnx"), "license": "free",
        "sha256": sha(body) if sha256 is None else sha256, "size": len(body) if size is None else size}})
    return reg.get("swapper")


def _one_line(err: str) -> str:
    """The user's message: exactly one `mirage: error:` line, no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("mirage: error: ")
    return lines[0]


def _leftovers(d) -> list:
    """Partial, temporary and probe files left in ``d``."""
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir()
                  if p.name.endswith((".part", ".tmp", ".probe")) or ".tmp" in p.name)


# ---------------------------------------------------------------------------- too much

@pytest.mark.parametrize("framing", ["close", "chunked"])
def test_body_longer_than_the_registry_size_stops_at_the_limit(tmp_path, monkeypatch, server, models_env,
                                                               framing):
    # no Content-Length: only the registry's size says where the file ends; 4 MB more follow
    spec = _one_model(tmp_path, monkeypatch, server, extra=os.urandom(4 << 20), framing=framing)
    part = models_env / "swapper.onnx.part"
    seen = []

    def on_progress(done, total):
        seen.append((done, part.stat().st_size if part.exists() else 0))

    with pytest.raises(ModelError) as err:
        dl.download(spec, progress=False, on_progress=on_progress)
    text = str(err.value)
    assert "the server sent more than expected (more than 200,000 bytes, the size in the model list)" in text
    assert "the partial download was deleted" in text and "mirage models download --force swapper" in text
    # never written past the expected size, at any moment, and nothing is left
    assert seen and max(on_disk for _d, on_disk in seen) <= len(BODY)
    assert max(done for done, _s in seen) <= len(BODY)
    assert not part.exists() and not model_path(spec).exists()
    assert _leftovers(models_env) == []


def test_too_much_through_the_cli_is_one_line_and_exit_2(tmp_path, monkeypatch, server, models_env, cli,
                                                          capsys):
    _one_model(tmp_path, monkeypatch, server, extra=b"x" * 300_000, framing="close")
    rc, err = cli(capsys, "download", "--no-progress", "swapper")
    line = _one_line(err)
    assert rc == 2
    assert "swapper.onnx from http://127.0.0.1:" in line and "the server sent more than expected" in line
    assert "mirage models download --force swapper" in line and "MIRAGE_SWAPPER_URL" in line
    assert _leftovers(models_env) == [] and not (models_env / "swapper.onnx").exists()


def test_announced_length_over_the_expected_size_is_refused_before_writing(tmp_path, monkeypatch, server,
                                                                           models_env):
    spec = _one_model(tmp_path, monkeypatch, server, extra=b"x" * 1000, framing="length")
    with pytest.raises(ModelError) as err:
        dl.download(spec, progress=False)
    text = str(err.value)
    assert ("the server sent more than expected (it announced 201,000 bytes, at most 200,000 expected "
            "from the size in the model list); nothing was written") in text
    assert _leftovers(models_env) == [] and not model_path(spec).exists()


def test_unknown_size_is_capped_by_content_length(tmp_path, monkeypatch, server, models_env):
    # no size in the registry: Content-Length is the limit, and bytes after it are not kept
    spec = _one_model(tmp_path, monkeypatch, server, size=0, extra=b"", framing="length")
    assert spec.size is None
    assert dl.download(spec, progress=False).read_bytes() == BODY
    assert _leftovers(models_env) == []


def test_unknown_size_and_no_length_is_capped(tmp_path, monkeypatch, server, models_env):
    monkeypatch.setattr(dl, "MAX_UNKNOWN_SIZE", 100_000)
    spec = _one_model(tmp_path, monkeypatch, server, size=0, extra=b"", framing="close")
    with pytest.raises(ModelError) as err:
        dl.download(spec, progress=False)
    text = str(err.value)
    assert "the server sent more than expected (more than 100,000 bytes, the most Mirage accepts" in text
    assert "set MIRAGE_SWAPPER_SIZE" in text
    assert _leftovers(models_env) == []


# ---------------------------------------------------------------------------- archives

def _zip(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _pack_registry(tmp_path, monkeypatch, server, zip_bytes: bytes, det: bytes, *, det_size=None,
                   det_sha=None):
    served = server.add("/pack.zip", zip_bytes)
    rec = b"r" * 10
    reg = _registry(tmp_path, monkeypatch, {
        "det": {"filename": "det.onnx", "archive": "pack", "member": "det.onnx",
                "sha256": sha(det) if det_sha is None else det_sha,
                "size": len(det) if det_size is None else det_size, "needed_by": ["detect"]},
        "rec": {"filename": "rec.onnx", "archive": "pack", "member": "rec.onnx",
                "sha256": sha(rec), "size": len(rec), "needed_by": ["recognize"]},
    }, {"pack": {"url": server.url("/pack.zip"), "filename": "pack.zip", "sha256": "", "size": 0,
                 "license": "nc"}})
    return reg, served, rec


@pytest.mark.parametrize("size_known", [True, False])
def test_zip_bomb_is_refused_before_extracting_and_the_archive_deleted(tmp_path, monkeypatch, server,
                                                                       models_env, cli, capsys, size_known):
    bomb = bytes(20 << 20)  # 20 MB of zeros deflate to about 20 kB: ~1000x
    zbytes = _zip({"pack/det.onnx": bomb, "pack/rec.onnx": b"r" * 10}, zipfile.ZIP_DEFLATED)
    assert len(zbytes) < 100_000
    _reg, served, _rec = _pack_registry(tmp_path, monkeypatch, server, zbytes, bomb,
                                        det_size=None if size_known else 0)
    rc, err = cli(capsys, "download", "--yes", "--no-progress", "det")
    line = _one_line(err)
    assert rc == 2
    assert "det.onnx in pack.zip from http://127.0.0.1:" in line
    assert "is compressed" in line and "over 200x is a zip bomb" in line and "the archive was deleted" in line
    assert "MIRAGE_DET_URL" in line
    # nothing of the bomb was written, and the archive is gone: the next try downloads it anew
    assert not (models_env / "det.onnx").exists() and not (models_env / "pack.zip").exists()
    assert _leftovers(models_env) == []
    assert cli(capsys, "download", "--yes", "--no-progress", "det")[0] == 2
    assert len(served.requests) == 2


def test_member_declaring_another_size_than_the_registry_is_refused(tmp_path, monkeypatch, server,
                                                                    models_env):
    det = os.urandom(5000)
    reg, _served, _rec = _pack_registry(tmp_path, monkeypatch, server,
                                        _zip({"det.onnx": det + os.urandom(50_000), "rec.onnx": b"r" * 10}), det)
    with pytest.raises(ModelError) as err:
        dl.download(reg.get("det"), progress=False, on_warning=lambda m: None)
    text = str(err.value)
    assert "det.onnx in pack.zip" in text and "declares 55,000 bytes, expected 5,000" in text
    assert "the archive was deleted" in text
    assert not (models_env / "pack.zip").exists() and not (models_env / "det.onnx").exists()
    assert _leftovers(models_env) == []


def _lie_about_size(zbytes: bytes, member: str, declared: int) -> bytes:
    """Patch ``member``'s uncompressed size in its local header and its central directory entry."""
    data = bytearray(zbytes)
    with zipfile.ZipFile(io.BytesIO(zbytes)) as zf:
        info = zf.getinfo(member)
    struct.pack_into("<I", data, info.header_offset + 22, declared)  # local file header
    # the central directory starts where the end-of-central-directory record says
    eocd = data.rindex(b"PK\x05\x06")
    cd = struct.unpack_from("<I", data, eocd + 16)[0]
    for _ in range(struct.unpack_from("<H", data, eocd + 10)[0]):  # one entry per member
        assert data[cd:cd + 4] == b"PK\x01\x02"
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, cd + 28)
        if data[cd + 46:cd + 46 + name_len].decode() == member:
            struct.pack_into("<I", data, cd + 24, declared)
            return bytes(data)
        cd += 46 + name_len + extra_len + comment_len
    raise AssertionError(f"{member} not in the central directory")


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_member_whose_header_lies_writes_no_more_than_declared(tmp_path, monkeypatch, server, models_env,
                                                               compression):
    # the header declares the expected 5000 bytes; the member really holds 3 MB (zeros when
    # deflated: a bomb hiding behind an honest-looking ratio)
    det = os.urandom(5000)
    real = det + (bytes(3 << 20) if compression == zipfile.ZIP_DEFLATED else os.urandom(3 << 20))
    zbytes = _lie_about_size(_zip({"det.onnx": real, "rec.onnx": b"r" * 10}, compression), "det.onnx", len(det))
    with zipfile.ZipFile(io.BytesIO(zbytes)) as zf:
        assert zf.getinfo("det.onnx").file_size == len(det)  # what the header says
    reg, _served, _rec = _pack_registry(tmp_path, monkeypatch, server, zbytes, det)
    with pytest.raises(ModelError) as err:
        dl.download(reg.get("det"), progress=False, on_warning=lambda m: None)
    text = str(err.value)
    assert "pack.zip from http://127.0.0.1:" in text and "is not a valid zip" in text
    assert "the archive was deleted" in text
    assert not (models_env / "det.onnx").exists() and not (models_env / "pack.zip").exists()
    assert _leftovers(models_env) == []


def test_bomb_in_a_sibling_is_skipped_and_the_archive_not_reused(tmp_path, monkeypatch, server, models_env):
    det, bomb = os.urandom(5000), bytes(20 << 20)
    served = server.add("/pack.zip", _zip({"det.onnx": det, "rec.onnx": bomb}, zipfile.ZIP_DEFLATED))
    reg = _registry(tmp_path, monkeypatch, {
        "det": {"filename": "det.onnx", "archive": "pack", "member": "det.onnx", "sha256": sha(det),
                "size": len(det), "needed_by": ["detect"]},
        "rec": {"filename": "rec.onnx", "archive": "pack", "member": "rec.onnx", "sha256": sha(bomb),
                "size": 0, "needed_by": ["recognize"]},
    }, {"pack": {"url": server.url("/pack.zip"), "filename": "pack.zip", "sha256": "", "size": 0,
                 "license": "nc"}})
    warnings = []
    assert dl.download(reg.get("det"), progress=False, on_warning=warnings.append).read_bytes() == det
    assert any("rec.onnx in pack.zip" in w and "zip bomb" in w and "rec was left as it was" in w
               for w in warnings)
    assert not (models_env / "rec.onnx").exists() and not (models_env / "pack.zip").exists()
    assert _leftovers(models_env) == []
    with pytest.raises(ModelError, match="zip bomb"):
        dl.download(reg.get("rec"), progress=False, on_warning=warnings.append)
    assert len(served.requests) == 2  # fetched again, not reused


def test_zip_without_a_size_is_capped_by_content_length(tmp_path, monkeypatch, server, models_env):
    det = os.urandom(5000)
    zbytes = _zip({"det.onnx": det, "rec.onnx": b"r" * 10})
    reg, served, _rec = _pack_registry(tmp_path, monkeypatch, server, zbytes, det)
    served.extra, served.framing = b"x" * 10, "length"  # announces 10 bytes too many...
    assert reg.get("det").archive.size is None
    dl.download(reg.get("det"), progress=False)  # ...and Content-Length is the zip's size
    assert (models_env / "det.onnx").read_bytes() == det


# ---------------------------------------------------------------------------- nothing (stall)

def test_stall_timeout_default_is_under_30_seconds():
    assert 0 < dl.STALL_TIMEOUT < 30


def test_stalled_body_is_reported_naming_the_server_and_the_part_resumes(tmp_path, monkeypatch, server,
                                                                          models_env):
    # headers and 1000 bytes, then the connection stays open and nothing comes
    spec = _one_model(tmp_path, monkeypatch, server, mode="stall")
    monkeypatch.setattr(dl, "RETRIES", 50)  # retries must not stretch the stall
    host = server.base[len("http://"):]
    with pytest.raises(ModelError) as err:
        dl.download(spec, progress=False, stall_timeout=0.5)
    text = str(err.value)
    assert text == (f"download of swapper.onnx stalled: {host} sent nothing for 0.5 s "
                    f"({server.url('/m.onnx')}); 1.0 kB of 0.2 MB kept — try again later "
                    f"(`mirage models download swapper` resumes it), or set MIRAGE_SWAPPER_URL "
                    f"to another mirror")
    served = server.files["/m.onnx"]
    assert len(served.requests) == 1  # reported at the first stall, not retried 50 times
    part = models_env / "swapper.onnx.part"
    assert part.read_bytes() == BODY[:1000]  # a network failure keeps the part, to resume
    served.mode = "good"
    served.release.set()
    assert dl.download(spec, progress=False, stall_timeout=0.5).read_bytes() == BODY
    assert served.requests[-1] == "bytes=1000-"
    assert _leftovers(models_env) == []


def test_silent_server_through_the_cli(tmp_path, monkeypatch, server, models_env, cli, capsys):
    # the connection is accepted, the request read, and no byte ever comes back
    _one_model(tmp_path, monkeypatch, server, mode="silent")
    monkeypatch.setattr(dl, "STALL_TIMEOUT", 0.5)
    monkeypatch.setattr(dl, "RETRIES", 50)
    rc, err = cli(capsys, "download", "--no-progress", "swapper")
    line = _one_line(err)
    assert rc == 2
    host = server.base[len("http://"):]
    assert line == (f"mirage: error: download of swapper.onnx stalled: {host} sent nothing for 0.5 s "
                    f"({server.url('/m.onnx')}) — try again later, or set MIRAGE_SWAPPER_URL to another mirror")
    assert len(server.files["/m.onnx"].requests) == 1
    assert _leftovers(models_env) == [] and not (models_env / "swapper.onnx").exists()


# ---------------------------------------------------------------------------- places that cannot be written

def test_download_into_an_unwritable_place(unwritable_target, tmp_path, monkeypatch, server, cli, capsys):
    path, words = unwritable_target
    monkeypatch.setenv("MIRAGE_MODELS_DIR", str(path.parent))
    _one_model(tmp_path, monkeypatch, server, filename=path.name)
    before = sorted(p.name for p in path.parent.iterdir()) if path.parent.is_dir() else None
    rc, err = cli(capsys, "download", "--no-progress", "swapper")
    line = _one_line(err)
    assert rc == 2
    assert f"cannot write model file {path}" in line and words in line, line
    assert "MIRAGE_MODELS_DIR" in line
    if path.is_dir():  # the fix fits a model file, not "give a file name"
        assert "move or delete that folder" in line
    assert server.files["/m.onnx"].requests == []  # refused before any download
    assert not path.is_file()
    assert _leftovers(path.parent) == []
    if before is not None:  # at most the (empty) lock file was added
        after = sorted(p.name for p in path.parent.iterdir())
        assert set(after) - set(before) <= {f".{path.name}.lock"}


def test_disk_that_fills_up_while_downloading(full_dir, tmp_path, monkeypatch, server, cli, capsys):
    # 64 kB of room, a 200 kB body of unknown size and no Content-Length: the disk fills mid-way
    monkeypatch.setattr(dl, "SPACE_MARGIN", 0)
    filler = full_dir / ".filler"
    os.truncate(filler, filler.stat().st_size - 64 * 1024)
    monkeypatch.setenv("MIRAGE_MODELS_DIR", str(full_dir))
    _one_model(tmp_path, monkeypatch, server, size=0, extra=b"", framing="close")
    rc, err = cli(capsys, "download", "--no-progress", "swapper")
    line = _one_line(err)
    assert rc == 2
    assert f"cannot write download {full_dir / 'swapper.onnx.part'}: the disk is full" in line
    assert "the partial download was deleted" in line and "free some space" in line
    assert _leftovers(full_dir) == [] and not (full_dir / "swapper.onnx").exists()


def test_space_margin_is_kept_free_while_writing(full_dir, tmp_path, monkeypatch, server, models_env):
    # the size is unknown until the end: the writer stops before the last 32 kB are used
    monkeypatch.setattr(dl, "SPACE_MARGIN", 32 * 1024)
    filler = full_dir / ".filler"
    os.truncate(filler, filler.stat().st_size - 96 * 1024)
    monkeypatch.setenv("MIRAGE_MODELS_DIR", str(full_dir))
    spec = _one_model(tmp_path, monkeypatch, server, size=0, extra=b"", framing="close")
    with pytest.raises(dl.DownloadWriteError) as err:
        dl.download(spec, progress=False)
    assert f"cannot write model file {full_dir / 'swapper.onnx'}: the disk is full" in str(err.value)
    assert "must stay free" in str(err.value)
    assert _leftovers(full_dir) == []


def test_archive_member_that_does_not_fit(full_dir, tmp_path, monkeypatch, server, cli, capsys):
    # the zip fits, extracting its 40 kB member next to it does not
    monkeypatch.setattr(dl, "SPACE_MARGIN", 0)
    filler = full_dir / ".filler"
    os.truncate(filler, filler.stat().st_size - 64 * 1024)
    monkeypatch.setenv("MIRAGE_MODELS_DIR", str(full_dir))
    det = os.urandom(40_000)
    _pack_registry(tmp_path, monkeypatch, server, _zip({"det.onnx": det, "rec.onnx": b"r" * 10}), det)
    rc, err = cli(capsys, "download", "--yes", "--no-progress", "det")
    line = _one_line(err)
    assert rc == 2
    assert f"cannot write model file {full_dir / 'det.onnx'}: not enough disk space (needs 40.0 kB" in line
    assert not (full_dir / "det.onnx").exists() and _leftovers(full_dir) == []


def test_lock_file_that_cannot_be_created(tmp_path, monkeypatch, server, models_env, cli, capsys):
    _one_model(tmp_path, monkeypatch, server)
    lock = models_env / ".swapper.onnx.lock"
    lock.mkdir(parents=True)  # something else is where the lock file goes
    rc, err = cli(capsys, "download", "--no-progress", "swapper")
    line = _one_line(err)
    assert rc == 2
    assert line == (f"mirage: error: cannot write lock file {lock}: it is a folder (it guards the download "
                    f"of swapper.onnx) — move or delete that folder; MIRAGE_MODELS_DIR sets where models "
                    f"are kept")
    assert server.files["/m.onnx"].requests == []
    assert _leftovers(models_env) == [] and not (models_env / "swapper.onnx").exists()


def test_pins_file_that_cannot_be_written(tmp_path, monkeypatch, server, models_env, cli, capsys):
    # a model with no confirmed hash is pinned on first download; pins.json cannot be written
    _one_model(tmp_path, monkeypatch, server, sha256="", size=0)
    (models_env / "pins.json").mkdir(parents=True)
    rc, err = cli(capsys, "download", "--no-progress", "swapper")
    line = _one_line(err)
    assert rc == 2
    assert line == (f"mirage: error: cannot write pins file {models_env / 'pins.json'}: it is a folder "
                    f"(it records the hash of swapper.onnx); swapper.onnx was not installed — move or "
                    f"delete that folder; MIRAGE_MODELS_DIR sets where models are kept")
    # nothing unverifiable in place, nothing half-written
    assert not (models_env / "swapper.onnx").exists() and _leftovers(models_env) == []


def test_unwritable_verification_cache_does_not_break_status_or_download(tmp_path, monkeypatch, server,
                                                                        models_env, cli, capsys):
    spec = _one_model(tmp_path, monkeypatch, server)
    models_env.mkdir(parents=True)
    (models_env / ".verify-cache.json").mkdir()  # the cache cannot be written: only slower
    rc, err = cli(capsys, "download", "--no-progress", "swapper")
    assert rc == 0 and "Traceback" not in err
    assert status(spec).state == "present"
    assert cli(capsys, "status")[0] == 0
    assert cli(capsys, "download", "--no-progress", "swapper")[0] == 0  # already present


def test_write_errors_are_both_model_and_write_errors():
    assert issubclass(dl.DownloadWriteError, ModelError) and issubclass(dl.DownloadWriteError, WriteError)


def test_zlib_bomb_ratio_constant_is_sane():
    # DEFLATE cannot exceed ~1032x; real model weights are about 1.1x: the cap sits between
    data = os.urandom(1 << 20)
    assert len(data) / len(zlib.compress(data, 9)) < 2 < dl.MAX_RATIO < 1000


def test_a_real_mirage_process_refusing_a_zip_bomb(tmp_path, monkeypatch, server, models_env):
    """The installed entry point, as a user runs it: one line on stderr, exit 2, nothing left."""
    import subprocess

    bomb = bytes(20 << 20)
    _pack_registry(tmp_path, monkeypatch, server,
                   _zip({"det.onnx": bomb, "rec.onnx": b"r" * 10}, zipfile.ZIP_DEFLATED), bomb)
    r = subprocess.run([sys.executable, "-m", "mirage_desktop.cli", "models", "download", "--yes",
                        "--no-progress", "det"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       env=dict(os.environ), timeout=120)
    line = _one_line(r.stderr)
    assert r.returncode == 2
    assert re.search(r"is compressed 1,0\d\dx", line) and "zip bomb" in line and "the archive was deleted" in line
    assert not (models_env / "det.onnx").exists() and not (models_env / "pack.zip").exists()
    assert _leftovers(models_env) == []
