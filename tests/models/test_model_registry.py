"""models.toml, the registry API, status (with its cache) and require()."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from model_test_support import sha, write_toml
from mirage_desktop.errors import ModelError
from mirage_desktop.models import registry as regmod
from mirage_desktop.models.registry import load_registry, model_path, require, status

REPO = Path(__file__).resolve().parents[2]


def test_shipped_models_toml_lists_the_models_with_sources(models_env):
    reg = load_registry()
    assert reg.source.resolve() == (REPO / "models.toml").resolve()
    link = REPO / "mirage_desktop" / "models" / "models.toml"
    assert link.is_symlink() and link.resolve() == (REPO / "models.toml").resolve()
    for name in ("det_10g", "w600k_r50", "inswapper_128", "inswapper_128_fp16", "codeformer", "gfpgan_1_4"):
        spec = reg.get(name)
        assert spec.url.startswith("https://")
        assert spec.license and spec.license_url.startswith("https://")
        assert spec.commercial_use is False
        assert spec.needed_by
        assert spec.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", spec.sha256)
        if spec.sha256:
            assert spec.sha256_source, f"{name}: a confirmed hash must say where it came from"
    for name in ("det_10g", "w600k_r50"):
        spec = reg.get(name)
        assert spec.archive is not None
        assert spec.archive.url.endswith("/v0.7/buffalo_l.zip")
        assert spec.archive.sha256 is None  # no public checksum for the zip: pinned on download
        assert spec.archive.member == spec.filename
    assert [s.name for s in reg.resolve("buffalo_l")] == ["det_10g", "w600k_r50"]
    assert [s.name for s in reg.needed_for({"detect", "recognize", "swap"})] == [
        "det_10g", "w600k_r50", "inswapper_128_fp16"]
    assert [s.name for s in reg.needed_for({"enhance"})] == ["codeformer"]
    licences = (REPO / "LICENSES.md").read_text(encoding="utf-8")
    for spec in reg:
        assert spec.name in licences


def test_env_overrides_on_the_shipped_list(models_env, monkeypatch):
    monkeypatch.setenv("MIRAGE_INSWAPPER_URL", "http://127.0.0.1:9/a.onnx")
    monkeypatch.setenv("MIRAGE_CODEFORMER_URL", "http://127.0.0.1:9/cf.pth")
    monkeypatch.setenv("MIRAGE_BUFFALO_L_URL", "http://127.0.0.1:9/b.zip")
    reg = load_registry()
    assert reg.get("inswapper_128_fp16").url == "http://127.0.0.1:9/a.onnx"
    assert reg.get("inswapper_128").url.startswith("https://")  # the alias is the default swapper's
    assert reg.get("codeformer").url == "http://127.0.0.1:9/cf.pth"
    assert reg.get("det_10g").archive.url == "http://127.0.0.1:9/b.zip"
    monkeypatch.setenv("MIRAGE_INSWAPPER_128_FP16_URL", "http://127.0.0.1:9/specific.onnx")
    assert load_registry().get("inswapper_128_fp16").url == "http://127.0.0.1:9/specific.onnx"
    monkeypatch.setenv("MIRAGE_CODEFORMER_SHA256", "a" * 64)
    assert load_registry().get("codeformer").sha256 == "a" * 64


def test_unknown_name_lists_known_ones(models_env):
    reg = load_registry()
    with pytest.raises(ModelError) as err:
        reg.get("nope")
    assert "nope" in str(err.value) and "inswapper_128_fp16" in str(err.value)
    with pytest.raises(ModelError, match="buffalo_l"):
        reg.resolve("nope")


def test_bad_models_toml_is_a_clear_error(tmp_path, models_env):
    bad = write_toml(tmp_path / "bad.toml", {"m": {"filename": "m.onnx", "url": "http://x/m", "sha256": "abc"}})
    with pytest.raises(ModelError, match="64 hex"):
        load_registry(bad)


def _local(tmp_path, body=b"weights" * 1000, **extra):
    table = {"filename": "m.onnx", "url": "http://127.0.0.1:9/m.onnx", "sha256": sha(body), "size": len(body)}
    table.update(extra)
    return load_registry(write_toml(tmp_path / "models.toml", {"m": table})).get("m"), body


def test_status_missing_present_corrupt_and_require(tmp_path, models_env):
    spec, body = _local(tmp_path)
    path = model_path(spec)
    assert path == models_env / "m.onnx"
    st = status(spec)
    assert st.state == "missing" and st.size is None
    with pytest.raises(ModelError) as err:
        require(spec)
    assert str(err.value) == "m is missing — run `mirage models download m`"

    # a .part is never present
    models_env.mkdir(parents=True, exist_ok=True)
    (models_env / "m.onnx.part").write_bytes(body)
    assert status(spec).state == "missing" and "partial" in status(spec).detail
    (models_env / "m.onnx.part").unlink()

    path.write_bytes(body)
    st = status(spec)
    assert (st.state, st.size, st.path) == ("present", len(body), path)
    assert require(spec) == path

    bad = bytearray(body)
    bad[10] ^= 0xFF
    path.write_bytes(bytes(bad))
    os.utime(path, ns=(1, 1))  # make sure the cache key changes even on a coarse clock
    st = status(spec)
    assert st.state == "corrupt" and "sha256 mismatch" in st.detail
    with pytest.raises(ModelError) as err:
        require(spec)
    assert str(err.value) == "m is corrupt (sha256 mismatch) — run `mirage models download --force m`"

    path.write_bytes(body[:-1])
    st = status(spec)
    assert st.state == "corrupt" and "size mismatch" in st.detail


def test_status_caches_the_hash_by_path_size_and_mtime(tmp_path, models_env, monkeypatch):
    spec, body = _local(tmp_path)
    models_env.mkdir(parents=True)
    model_path(spec).write_bytes(body)
    assert status(spec).state == "present"
    assert (models_env / regmod.VERIFY_CACHE_FILE).exists()

    calls = []
    real = regmod.sha256_file
    monkeypatch.setattr(regmod, "sha256_file", lambda p, *a, **k: calls.append(p) or real(p, *a, **k))
    assert status(spec).state == "present"
    assert calls == []  # served from the cache
    st = model_path(spec).stat()
    os.utime(model_path(spec), ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert status(spec).state == "present"
    assert len(calls) == 1  # mtime changed: hashed again
    assert status(spec, refresh=True).state == "present"
    assert len(calls) == 2  # refresh ignores the cache


def test_unverified_without_hash_or_pin(tmp_path, models_env):
    spec, body = _local(tmp_path, sha256="", size=0)
    models_env.mkdir(parents=True)
    model_path(spec).write_bytes(body)
    assert status(spec).state == "unverified"
    with pytest.raises(ModelError, match="--pin m"):
        require(spec)
    regmod.pin_sha256("m", sha(body))
    assert status(spec).state == "present"
    assert require(spec) == model_path(spec)


def test_require_by_name_uses_the_configured_registry(tmp_path, models_env, monkeypatch):
    spec, body = _local(tmp_path)
    monkeypatch.setenv("MIRAGE_MODELS_TOML", str(tmp_path / "models.toml"))
    with pytest.raises(ModelError, match="m is missing"):
        require("m")
    models_env.mkdir(parents=True)
    model_path(spec).write_bytes(body)
    assert require("m") == models_env / "m.onnx"


def test_cache_is_not_fooled_by_a_same_size_rewrite_with_mtime_restored(tmp_path, models_env):
    spec, body = _local(tmp_path)
    models_env.mkdir(parents=True)
    path = model_path(spec)
    path.write_bytes(body)
    assert status(spec).state == "present"
    st = path.stat()
    # in place, same size, timestamp put back (a backup restore, utime())
    with open(path, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\0" * 64)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size
    assert status(spec).state == "corrupt"


def test_cache_is_not_fooled_by_another_file_copied_over_with_its_timestamp(tmp_path, models_env):
    spec, body = _local(tmp_path)
    models_env.mkdir(parents=True)
    path = model_path(spec)
    path.write_bytes(body)
    assert status(spec).state == "present"
    st = path.stat()
    # `cp -p other m.onnx` / `rsync -t`: a same-size file renamed over it, mtime kept
    other = models_env / "other.tmp"
    other.write_bytes(os.urandom(len(body)))
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, path)
    assert path.stat().st_mtime_ns == st.st_mtime_ns
    assert status(spec).state == "corrupt"


def test_sha256_override_makes_the_size_unknown_unless_given(tmp_path, models_env, monkeypatch):
    spec, body = _local(tmp_path)
    assert spec.size == len(body)
    spec_path = tmp_path / "models.toml"
    monkeypatch.setenv("MIRAGE_M_SHA256", "c" * 64)
    assert load_registry(spec_path).get("m").size is None
    monkeypatch.setenv("MIRAGE_M_SIZE", "1234")
    assert load_registry(spec_path).get("m").size == 1234
    monkeypatch.setenv("MIRAGE_M_SIZE", "12 MB")
    with pytest.raises(ModelError, match="MIRAGE_M_SIZE"):
        load_registry(spec_path)
    # an other export that is present verifies against the overridden hash, whatever its size
    monkeypatch.delenv("MIRAGE_M_SIZE")
    other = b"other export" * 77
    monkeypatch.setenv("MIRAGE_M_SHA256", sha(other))
    models_env.mkdir(parents=True)
    model_path(spec).write_bytes(other)
    assert status(load_registry(spec_path).get("m")).state == "present"


def test_sha256_override_on_the_shipped_list_drops_its_size(models_env, monkeypatch):
    monkeypatch.setenv("MIRAGE_INSWAPPER_128_FP16_SHA256", "d" * 64)
    monkeypatch.setenv("MIRAGE_BUFFALO_L_SHA256", "e" * 64)
    reg = load_registry()
    assert reg.get("inswapper_128_fp16").size is None
    assert reg.get("det_10g").archive.sha256 == "e" * 64 and reg.get("det_10g").archive.size is None
    assert reg.get("inswapper_128").size == 554253681  # untouched


@pytest.mark.parametrize("url", ["file:///etc/passwd", "/home/me/inswapper.onnx", "ftp://x/m.onnx",
                                 "C:\\models\\m.onnx", "http://", "not a url"])
def test_override_url_must_be_http(tmp_path, models_env, monkeypatch, url):
    _local(tmp_path)
    monkeypatch.setenv("MIRAGE_M_URL", url)
    with pytest.raises(ModelError) as err:
        load_registry(tmp_path / "models.toml")
    assert "MIRAGE_M_URL" in str(err.value) and "http" in str(err.value)


def test_archive_override_and_models_toml_urls_must_be_http(tmp_path, models_env, monkeypatch):
    monkeypatch.setenv("MIRAGE_BUFFALO_L_URL", "file:///tmp/buffalo_l.zip")
    with pytest.raises(ModelError, match="MIRAGE_BUFFALO_L_URL"):
        load_registry()
    monkeypatch.delenv("MIRAGE_BUFFALO_L_URL")
    bad = write_toml(tmp_path / "bad.toml", {"m": {"filename": "m.onnx", "url": "ftp://x/m"}})
    with pytest.raises(ModelError, match=r"\[models\.m\]"):
        load_registry(bad)
