"""Settings precedence and safety, metric percentiles, the session factory's provider choice."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from mirage_desktop import config
from mirage_desktop.errors import MirageError, WriteError
from mirage_desktop.metrics import LatencyHistogram, Metrics
from mirage_desktop.models import runtime
from mirage_desktop.testing import face_models as synthetic


def test_precedence_defaults_file_env_cli(tmp_path):
    path = tmp_path / "settings.json"
    assert config.load(path=path, environ={}).settings.max_faces == 1
    config.save(config.Settings(max_faces=2, det_size=320), path)
    assert config.load(path=path, environ={}).settings.max_faces == 2
    env = {"MIRAGE_MAX_FACES": "3", "MIRAGE_ENABLE_SWAP": "0", "MIRAGE_CODEFORMER_FIDELITY": "0.4"}
    s = config.load(path=path, environ=env).settings
    assert (s.max_faces, s.enable_swap, s.codeformer_fidelity, s.det_size) == (3, False, 0.4, 320)
    s = config.load({"max_faces": 4}, path=path, environ=env).settings
    assert s.max_faces == 4


def test_bad_env_value_names_the_variable():
    with pytest.raises(MirageError, match="^MIRAGE_MAX_FACES=many is not a whole number"):
        config.load(path=None, environ={"MIRAGE_MAX_FACES": "many"})
    with pytest.raises(MirageError, match="^MIRAGE_CODEFORMER_FIDELITY=1.5 is out of range"):
        config.load(path=None, environ={"MIRAGE_CODEFORMER_FIDELITY": "1.5"})


def test_corrupt_settings_file_is_set_aside(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text("{ not json")
    res = config.load(path=path, environ={})
    assert res.settings == config.Settings()
    assert res.notices and "unreadable" in res.notices[0]
    assert not path.exists()
    assert list(tmp_path.glob("settings.json.corrupt-*"))


def test_settings_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "settings.json"
    config.save(config.Settings(max_faces=2), path)
    import os

    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(WriteError, match="disk full"):
        config.save(config.Settings(max_faces=5), path)
    assert json.loads(path.read_text())["max_faces"] == 2  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["settings.json"]  # no temp file left


def test_percentiles_match_numpy():
    h = LatencyHistogram(window=1000)
    vals = np.random.default_rng(0).exponential(10, 5000)
    for v in vals:
        h.record(float(v))
    s = h.summary()
    recent = vals[-1000:]
    assert s["count"] == 5000
    assert s["p50"] == pytest.approx(np.percentile(recent, 50))
    assert s["p99"] == pytest.approx(np.percentile(recent, 99))
    assert s["max"] == pytest.approx(vals.max())


def test_metrics_snapshot_is_json_ready():
    m = Metrics()
    with m.timer("swap"):
        pass
    m.incr("frames.out", 3)
    m.set_gauge("provider", "CPUExecutionProvider")
    snap = json.loads(json.dumps(m.snapshot()))
    assert snap["stages"]["swap"]["count"] == 1 and snap["counters"]["frames.out"] == 3


def test_provider_order_and_fallback(tmp_path, caplog, monkeypatch):
    assert runtime.resolve_providers("auto")[-1] == "CPUExecutionProvider"
    monkeypatch.setattr(runtime, "available_providers",
                        lambda: ["CoreMLExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert runtime.resolve_providers("auto") == ["CUDAExecutionProvider", "CoreMLExecutionProvider",
                                                 "CPUExecutionProvider"]
    assert runtime.resolve_providers("cpu") == ["CPUExecutionProvider"]


def test_a_provider_that_fails_falls_back_with_the_reason(tmp_path, caplog, monkeypatch):
    import onnxruntime as ort

    p = synthetic.build_arcface(tmp_path / "a.onnx")
    real = ort.InferenceSession

    def fake_session(path, sess_options=None, providers=None, provider_options=None):
        if providers[0] == "CUDAExecutionProvider":
            raise RuntimeError("libcudnn.so.9: cannot open shared object file")
        return real(path, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(runtime, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", fake_session)
    with caplog.at_level(logging.WARNING):
        h = runtime.create_session(p, "auto")
    assert h.provider == "CPUExecutionProvider"
    assert "libcudnn" in h.fallback_reasons[0]
    assert "trying the next provider" in caplog.text


def test_spinning_is_off_and_missing_file_names_the_fix(tmp_path):
    h = runtime.create_session(synthetic.build_arcface(tmp_path / "a.onnx"))
    opts = h.session.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(MirageError, match="mirage models download"):
        runtime.create_session(tmp_path / "missing.onnx")


def test_environment_overrides_are_not_written_to_the_settings_file(tmp_path):
    path = tmp_path / "settings.json"
    config.save(config.Settings(max_faces=2), path, environ={})
    env = {"MIRAGE_ENABLE_SWAP": "0"}
    s = config.load(path=path, environ=env).settings
    config.save(s.replace(det_size=320), path, environ=env)
    saved = json.loads(path.read_text())
    assert saved["det_size"] == 320 and saved["max_faces"] == 2
    assert saved["enable_swap"] is True  # the file keeps its own value; the override was one-off
    assert config.load(path=path, environ={}).settings.enable_swap is True


def test_out_of_range_voice_settings_are_refused_and_not_stored():
    from mirage_desktop.engine import Engine

    eng = Engine(config.Settings())
    with pytest.raises(MirageError, match="voice_pitch"):
        eng.set_option("voice_pitch", 99)
    assert eng.settings.voice_pitch == 0.0
