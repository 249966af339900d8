import numpy as np
import pytest

from mirage_desktop.errors import ModelError
from mirage_desktop.voice.engine import VoiceEngine
from mirage_desktop.voice.f0 import harmonic_signal, median_f0
from mirage_desktop.voice.rvc import Rmvpe, RvcConverter, RvcModel, coarse_pitch, mel_filterbank


def test_models_have_the_rvc_signatures(rvc_models):
    import onnxruntime as ort

    s = ort.InferenceSession(str(rvc_models["model"]))
    assert [i.name for i in s.get_inputs()] == ["phone", "phone_lengths", "pitch", "pitchf", "ds", "rnd"]
    assert [i.type for i in s.get_inputs()] == ["tensor(float)", "tensor(int64)", "tensor(int64)",
                                                "tensor(float)", "tensor(int64)", "tensor(float)"]
    assert s.get_inputs()[5].shape[1] == 192 and s.get_outputs()[0].name == "audio"
    e = ort.InferenceSession(str(rvc_models["encoder"]))
    assert e.get_inputs()[0].name == "source" and len(e.get_inputs()[0].shape) == 3
    assert e.get_outputs()[0].shape[2] == 768


@pytest.mark.parametrize("method", ["dio", "harvest", "rmvpe"])
def test_rvc_converter_pitch_shift(rvc_models, method):
    conv = RvcConverter(rvc_models["model"], rvc_models["encoder"], rvc_models["rmvpe"], f0_method=method, pitch=4)
    x = harmonic_signal(150.0, 1.2)
    y = VoiceEngine(conv, fallback=False).process(x)
    # dio/harvest track the input (150 Hz); the synthetic RMVPE always says 200 Hz
    want = (200.0 if method == "rmvpe" else 150.0) * 2 ** (4 / 12)
    got = median_f0(y[4000:-4000])
    assert abs(got - want) / want < 0.02, (got, want)
    assert conv.options()["model_sr"] == 40000


def test_rmvpe_mel_and_decoding(rvc_models):
    r = Rmvpe(rvc_models["rmvpe"])
    assert r.mode == "mel"
    x = harmonic_signal(150.0, 0.5)
    mel = r.log_mel(x)
    assert mel.shape == (128, 1 + x.size // 160)
    f0 = r(x)
    assert f0.shape == (1 + x.size // 160,)
    assert np.allclose(f0, 200.0, rtol=0.005)
    # below the threshold → unvoiced
    assert np.all(r.decode(np.full((3, 360), 0.01, np.float32)) == 0.0)


def test_mel_filterbank_shape_and_coverage():
    fb = mel_filterbank()
    assert fb.shape == (128, 513)
    assert np.all(fb >= 0) and np.all(fb.sum(1) > 0)


def test_coarse_pitch_range():
    c = coarse_pitch(np.array([0.0, 50.0, 200.0, 1100.0, 3000.0]))
    assert c[0] == 1 and c[1] == 1 and 1 < c[2] < 255 and c[3] == 255 and c[4] == 255


def test_bad_models_give_clear_errors(rvc_models, tmp_path):
    with pytest.raises(ModelError, match="not found"):
        RvcModel(tmp_path / "nope.onnx", rvc_models["encoder"])
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load"):
        RvcModel(junk, rvc_models["encoder"])
    with pytest.raises(ModelError, match="6"):  # encoder given as synthesizer
        RvcModel(rvc_models["encoder"], rvc_models["encoder"])
    with pytest.raises(ModelError, match="rmvpe"):
        RvcConverter(rvc_models["model"], rvc_models["encoder"], None, f0_method="rmvpe")


def test_wrong_signature_rvc_models_are_refused_at_load(rvc_models, tmp_path):
    """Checked when the converter is built, not on the first chunk of a call."""
    from mirage_desktop.testing import voice_models as synthetic_models

    enc256 = synthetic_models.build_content_encoder(tmp_path / "vec256.onnx", channels=256)
    with pytest.raises(ModelError, match="256 channels, synthesizer wants 768"):
        RvcConverter(rvc_models["model"], enc256, None, f0_method="harvest")
    with pytest.raises(ModelError, match="RVC models failed a test run"):  # RMVPE given as encoder
        RvcConverter(rvc_models["model"], rvc_models["rmvpe"], None, f0_method="harvest")
    with pytest.raises(ModelError, match="RMVPE|test run"):  # the encoder given as RMVPE
        RvcConverter(rvc_models["model"], rvc_models["encoder"], rvc_models["encoder"], f0_method="rmvpe")
