"""CodeFormer architecture: runs at 512 with random weights, official layout, refuses bad state dicts."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mirage_desktop.errors import ModelError  # noqa: E402
from mirage_desktop.vision.codeformer_arch import (  # noqa: E402
    CodeFormer, _reference_model, check_state_dict, load_codeformer, read_checkpoint)
from mirage_desktop.vision.enhancer import (  # noqa: E402
    CodeFormerEnhancer, bgr_to_signed_rgb, signed_rgb_to_bgr)

SMALL = dict(dim_embd=64, n_head=2, n_layers=1, codebook_size=64, latent_size=16 * 16,
             connect_list=("32", "64"), img_size=64, nf=32, ch_mult=(1, 1, 2), emb_dim=32)


class NotAllowed:
    """An arbitrary pickled object: ``weights_only=True`` must refuse to build it."""


def small_net(seed: int = 0) -> CodeFormer:
    torch.manual_seed(seed)
    net = CodeFormer(**SMALL).eval()
    with torch.no_grad():  # the official init leaves position_emb at 0; make every path matter
        net.position_emb.normal_(0, 0.5)
    return net


def test_official_layout_names_and_shapes():
    """Spot-check the published codeformer.pth layout (params_ema) on the default config."""
    sd = _reference_model().state_dict()  # meta tensors: names and shapes only
    m = _reference_model()
    assert m.fuse_encoder_block == {"512": 2, "256": 5, "128": 8, "64": 11, "32": 14, "16": 18}
    assert m.fuse_generator_block == {"16": 6, "32": 9, "64": 12, "128": 15, "256": 18, "512": 21}
    expect = {
        "encoder.blocks.0.weight": (64, 3, 3, 3),
        "encoder.blocks.3.conv.weight": (64, 64, 3, 3),  # Downsample
        "encoder.blocks.16.conv_out.weight": (512, 256, 1, 1),
        "encoder.blocks.17.proj_out.weight": (512, 512, 1, 1),  # AttnBlock at 16x16
        "encoder.blocks.24.weight": (256, 512, 3, 3),
        "quantize.embedding.weight": (1024, 256),
        "generator.blocks.0.weight": (512, 256, 3, 3),
        "generator.blocks.20.conv.weight": (128, 128, 3, 3),  # last Upsample
        "generator.blocks.24.weight": (3, 64, 3, 3),
        "position_emb": (256, 512),
        "feat_emb.weight": (512, 256),
        "ft_layers.8.self_attn.in_proj_weight": (1536, 512),
        "ft_layers.8.self_attn.out_proj.weight": (512, 512),
        "ft_layers.0.linear1.weight": (1024, 512),
        "ft_layers.0.norm2.bias": (512,),
        "idx_pred_layer.0.weight": (512,),
        "idx_pred_layer.1.weight": (1024, 512),
        "fuse_convs_dict.32.encode_enc.conv_out.weight": (256, 512, 1, 1),
        "fuse_convs_dict.256.scale.2.weight": (128, 128, 3, 3),
        "fuse_convs_dict.128.shift.0.bias": (128,),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert "idx_pred_layer.1.bias" not in sd
    assert not any(k.startswith("fuse_convs_dict.16.") or k.startswith("fuse_convs_dict.512.") for k in sd)
    assert len(sd) == 515
    assert sum(v.numel() for v in sd.values()) == 94_112_707
    check_state_dict(sd)  # the reference layout passes its own check


@pytest.mark.slow
def test_random_weights_run_at_512_shape_and_range():
    """The full official-size network, random weights, one forward at 512x512 (seconds on CPU)."""
    torch.manual_seed(0)
    net = CodeFormer().eval()
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    x = torch.from_numpy(bgr_to_signed_rgb(crop))
    assert x.shape == (1, 3, 512, 512) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    with torch.inference_mode():
        y = net(x, w=0.75)
    assert y.shape == (1, 3, 512, 512)
    assert torch.isfinite(y).all()
    out = signed_rgb_to_bgr(y.numpy())  # what CodeFormerEnhancer.enhance returns
    assert out.shape == (512, 512, 3) and out.dtype == np.uint8 and out.std() > 0


def test_fidelity_changes_output_and_w0_skips_fusion():
    net = small_net()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        y0, y1, y0b = net(x, w=0.0), net(x, w=1.0), net(x, w=0.0)
    assert not torch.allclose(y0, y1)
    assert torch.equal(y0, y0b)
    enh = CodeFormerEnhancer.from_network(net, fidelity=0.3)
    assert enh.size == 64 and enh.provider == "cpu fp32"
    crop = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    a = enh.enhance(crop)
    enh.set_fidelity(7)
    assert enh.fidelity == 1.0
    b = enh.enhance(crop)
    assert a.shape == b.shape == (64, 64, 3) and a.dtype == np.uint8 and not np.array_equal(a, b)


def _save(tmp_path, sd, wrapper="params_ema", name="codeformer.pth"):
    p = tmp_path / name
    torch.save({wrapper: sd} if wrapper else sd, p)
    return p


def test_good_checkpoint_loads_with_either_wrapper(tmp_path):
    net = small_net(1)
    sd = net.state_dict()
    for wrapper in ("params_ema", "params", None):
        p = _save(tmp_path, sd, wrapper)
        got = load_codeformer(p, model=small_net(2))
        for k, v in got.state_dict().items():
            assert torch.equal(v, sd[k]), k


def test_missing_key_is_refused_with_the_key_named(tmp_path):
    sd = dict(small_net().state_dict())
    del sd["ft_layers.0.self_attn.in_proj_weight"]
    p = _save(tmp_path, sd)
    with pytest.raises(ModelError) as e:
        load_codeformer(p, model=small_net())
    msg = str(e.value)
    assert "codeformer.pth does not match the CodeFormer layout" in msg
    assert "missing 1 key" in msg and "ft_layers.0.self_attn.in_proj_weight" in msg
    assert "mirage models download --force codeformer" in msg
    assert "\n" not in msg


def test_renamed_and_unexpected_and_reshaped_keys_are_reported(tmp_path):
    sd = dict(small_net().state_dict())
    sd["fuse_convs_dict.32.scale.0.wieght"] = sd.pop("fuse_convs_dict.32.scale.0.weight")  # typo rename
    sd["extra.thing"] = torch.zeros(3)
    sd["feat_emb.weight"] = torch.zeros(5, 5)
    p = _save(tmp_path, sd)
    with pytest.raises(ModelError) as e:
        load_codeformer(p, model=small_net())
    msg = str(e.value)
    assert "renamed 1" in msg and "fuse_convs_dict.32.scale.0.wieght -> fuse_convs_dict.32.scale.0.weight" in msg
    assert "unexpected 1" in msg and "extra.thing" in msg
    assert "1 shape mismatch" in msg and "feat_emb.weight [5, 5] vs [64, 32]" in msg
    assert "missing" not in msg


def test_official_layout_check_catches_a_renamed_key():
    sd = dict(_reference_model().state_dict())
    sd["generator.blocks.9.conv_outt.weight"] = sd.pop("generator.blocks.9.conv_out.weight")
    del sd["quantize.embedding.weight"]
    with pytest.raises(ModelError, match=r"missing 1 key \(e\.g\. quantize\.embedding\.weight\).*renamed 1"):
        check_state_dict(sd)


def test_truncated_or_unsafe_file_is_a_model_error(tmp_path):
    p = _save(tmp_path, small_net().state_dict())
    data = p.read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="corrupt, truncated.*mirage models download --force codeformer"):
        read_checkpoint(bad)

    evil = tmp_path / "evil.pth"
    torch.save({"params_ema": {"x": torch.zeros(1)}, "obj": NotAllowed()}, evil)
    with pytest.raises(ModelError, match="could not be read"):
        read_checkpoint(evil)
    with pytest.raises(ModelError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    torch.save({"something": 1}, junk)
    with pytest.raises(ModelError, match="holds no state dict"):
        read_checkpoint(junk)
