"""The CodeFormer face restoration network (Zhou et al., NeurIPS 2022), written for this project.

Layout follows the official release so the published ``codeformer.pth`` (its ``params_ema``
dict) loads key for key: a VQGAN encoder (``encoder.blocks.N``), a 1024x256 codebook
(``quantize.embedding``), a 9-layer / 8-head / 512-dim transformer that predicts code indices
(``position_emb``, ``feat_emb``, ``ft_layers.N``, ``idx_pred_layer``), the VQGAN generator
(``generator.blocks.N``) and controllable feature transforms (``fuse_convs_dict.{32,64,128,256}``)
that mix encoder features back in with the fidelity weight ``w`` (0 = most "restored",
1 = closest to the input).

Only inference is implemented (no quantiser losses, no training paths). The network is
parameterised so tests can build a small version; the defaults are the official ones.

Loading: :func:`load_codeformer` reads the file with ``torch.load(..., weights_only=True)``,
strips a ``params_ema`` / ``params`` wrapper and checks the key layout with
:func:`check_state_dict`, which names missing, unexpected and renamed keys and shape
mismatches in one :class:`~mirage_desktop.errors.ModelError`.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError

FIX_REDOWNLOAD = "re-download with `mirage models download --force codeformer`"


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    """GroupNorm → swish → conv, twice, plus a (1x1-projected when widths differ) skip."""

    def __init__(self, in_ch: int, out_ch: int | None = None):
        super().__init__()
        out_ch = in_ch if out_ch is None else out_ch
        self.in_channels, self.out_channels = in_ch, out_ch
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.norm2 = _norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        if in_ch != out_ch:
            self.conv_out = nn.Conv2d(in_ch, out_ch, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.in_channels != self.out_channels:
            x = self.conv_out(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1 q/k/v/proj convolutions."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = _norm(ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        # (b, c, h, w) -> (b, 1, hw, c): one head, softmax over the keys, scale c^-1/2
        q, k, v = (t.reshape(b, 1, c, h * w).transpose(2, 3) for t in (self.q(y), self.k(y), self.v(y)))
        a = F.scaled_dot_product_attention(q, k, v)
        a = a.transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(a)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad, as the VQGAN was trained


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Blocks(nn.Module):
    """A plain ``blocks`` list, so parameter names read ``encoder.blocks.N...``."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


def _build_encoder(nf, emb_dim, ch_mult, n_res, img_size, attn_res):
    """VQGAN encoder blocks, and per resolution the index of its last residual block."""
    blocks: list[nn.Module] = [nn.Conv2d(3, nf, 3, 1, 1)]
    taps: dict[str, int] = {}
    res = img_size
    in_mult = (1,) + tuple(ch_mult)
    ch = nf
    for i, mult in enumerate(ch_mult):
        ch = nf * in_mult[i]
        out = nf * mult
        for _ in range(n_res):
            blocks.append(ResBlock(ch, out))
            ch = out
            taps[str(res)] = len(blocks) - 1
            if res in attn_res:
                blocks.append(AttnBlock(ch))
        if i != len(ch_mult) - 1:
            blocks.append(Downsample(ch))
            res //= 2
    blocks += [ResBlock(ch, ch), AttnBlock(ch), ResBlock(ch, ch), _norm(ch), nn.Conv2d(ch, emb_dim, 3, 1, 1)]
    return blocks, taps


def _build_generator(nf, emb_dim, ch_mult, n_res, img_size, attn_res):
    """VQGAN generator blocks, and per resolution the block after which features are fused:
    the first residual block at that resolution, the last one at the latent resolution."""
    ch = nf * ch_mult[-1]
    res = img_size // 2 ** (len(ch_mult) - 1)
    latent_res = res
    blocks: list[nn.Module] = [nn.Conv2d(emb_dim, ch, 3, 1, 1), ResBlock(ch, ch), AttnBlock(ch), ResBlock(ch, ch)]
    taps: dict[str, int] = {}
    for i in reversed(range(len(ch_mult))):
        out = nf * ch_mult[i]
        for r in range(n_res):
            blocks.append(ResBlock(ch, out))
            ch = out
            if r == 0 or res == latent_res:  # first block, or the last one at the latent size
                taps[str(res)] = len(blocks) - 1
            if res in attn_res:
                blocks.append(AttnBlock(ch))
        if i != 0:
            blocks.append(Upsample(ch))
            res *= 2
    blocks += [_norm(ch), nn.Conv2d(ch, 3, 3, 1, 1)]
    return blocks, taps


class VectorQuantizer(nn.Module):
    """The codebook. Inference only needs the lookup from indices to code vectors."""

    def __init__(self, codebook_size: int, emb_dim: int):
        super().__init__()
        self.codebook_size, self.emb_dim = codebook_size, emb_dim
        self.embedding = nn.Embedding(codebook_size, emb_dim)

    def lookup(self, indices: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
        """(b, h*w) code indices → (b, emb_dim, h, w) features."""
        z = F.embedding(indices, self.embedding.weight)  # (b, hw, c)
        return z.view(b, h, w, self.emb_dim).permute(0, 3, 1, 2).contiguous()


class TransformerSALayer(nn.Module):
    """Pre-norm self-attention + GELU MLP, positions added to queries and keys only."""

    def __init__(self, dim: int, n_head: int, dim_mlp: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, n_head, dropout=0.0)
        self.linear1 = nn.Linear(dim, dim_mlp)
        self.linear2 = nn.Linear(dim_mlp, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:  # x: (L, B, C)
        y = self.norm1(x)
        qk = y + pos
        x = x + self.self_attn(qk, qk, value=y, need_weights=False)[0]
        return x + self.linear2(F.gelu(self.linear1(self.norm2(x))))


class FuseSFTBlock(nn.Module):
    """Controllable feature transform: decoder features modulated by encoder features, times w."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.encode_enc = ResBlock(2 * in_ch, out_ch)
        self.scale = nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.LeakyReLU(0.2, True),
                                   nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.shift = nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.LeakyReLU(0.2, True),
                                   nn.Conv2d(out_ch, out_ch, 3, padding=1))

    def forward(self, enc: torch.Tensor, dec: torch.Tensor, w: float) -> torch.Tensor:
        e = self.encode_enc(torch.cat([enc, dec], dim=1))
        return dec + w * (dec * self.scale(e) + self.shift(e))


def _adain(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Give ``content`` the per-channel mean/std of ``style`` (unbiased variance, as upstream)."""
    b, c = content.shape[:2]
    cf, sf = content.float().reshape(b, c, -1), style.float().reshape(b, c, -1)
    c_mean, c_std = cf.mean(2), (cf.var(2) + eps).sqrt()
    s_mean, s_std = sf.mean(2), (sf.var(2) + eps).sqrt()
    out = (cf - c_mean[..., None]) / c_std[..., None] * s_std[..., None] + s_mean[..., None]
    return out.reshape(content.shape).to(content.dtype)


class CodeFormer(nn.Module):
    """CodeFormer for inference: ``forward(x, w) -> restored`` with ``x`` RGB in [-1, 1].

    Defaults are the official configuration (512 px input, 16x16 latent, codebook 1024x256,
    9 transformer layers, 8 heads, dim 512, fusion at 32/64/128/256).
    """

    def __init__(self, dim_embd: int = 512, n_head: int = 8, n_layers: int = 9,
                 codebook_size: int = 1024, latent_size: int = 256,
                 connect_list: Sequence[str] = ("32", "64", "128", "256"),
                 *, img_size: int = 512, nf: int = 64, ch_mult: Sequence[int] = (1, 2, 2, 4, 4, 8),
                 res_blocks: int = 2, attn_resolutions: Sequence[int] = (16,), emb_dim: int = 256):
        super().__init__()
        self.img_size = img_size
        self.emb_dim = emb_dim
        self.latent_hw = img_size // 2 ** (len(ch_mult) - 1)
        if self.latent_hw ** 2 != latent_size:
            raise ValueError(f"latent_size {latent_size} does not match a {self.latent_hw}x{self.latent_hw} latent")
        enc, enc_taps = _build_encoder(nf, emb_dim, ch_mult, res_blocks, img_size, tuple(attn_resolutions))
        gen, gen_taps = _build_generator(nf, emb_dim, ch_mult, res_blocks, img_size, tuple(attn_resolutions))
        self.encoder = _Blocks(enc)
        self.quantize = VectorQuantizer(codebook_size, emb_dim)
        self.generator = _Blocks(gen)

        self.position_emb = nn.Parameter(torch.zeros(latent_size, dim_embd))
        self.feat_emb = nn.Linear(emb_dim, dim_embd)
        self.ft_layers = nn.Sequential(*[TransformerSALayer(dim_embd, n_head, dim_embd * 2) for _ in range(n_layers)])
        self.idx_pred_layer = nn.Sequential(nn.LayerNorm(dim_embd), nn.Linear(dim_embd, codebook_size, bias=False))

        self.connect_list = [str(s) for s in connect_list]
        unknown = [s for s in self.connect_list if s not in enc_taps or s not in gen_taps]
        if unknown:
            raise ValueError(f"connect_list has resolutions this network does not have: {unknown}")
        self.fuse_encoder_block = {s: enc_taps[s] for s in enc_taps}
        self.fuse_generator_block = {s: gen_taps[s] for s in gen_taps}
        self.fuse_convs_dict = nn.ModuleDict()
        for s in self.connect_list:
            ch = enc[enc_taps[s]].out_channels
            self.fuse_convs_dict[s] = FuseSFTBlock(ch, ch)
        self._enc_taps = {enc_taps[s]: s for s in self.connect_list}
        self._gen_taps = {gen_taps[s]: s for s in self.connect_list}

    def forward(self, x: torch.Tensor, w: float = 0.5, adain: bool = True) -> torch.Tensor:
        """Restore ``x`` (B, 3, S, S), RGB in [-1, 1]; returns the same shape, roughly [-1, 1].

        ``w`` is the fidelity weight: 0 trusts the codebook, 1 keeps closest to the input.
        ``adain`` re-colours the code features like the input (the official inference does).
        """
        enc_feats: dict[str, torch.Tensor] = {}
        for i, block in enumerate(self.encoder.blocks):
            x = block(x)
            if i in self._enc_taps:
                enc_feats[self._enc_taps[i]] = x
        lq_feat = x
        b, _, h, wd = lq_feat.shape

        pos = self.position_emb.unsqueeze(1).expand(-1, b, -1)
        q = self.feat_emb(lq_feat.flatten(2).permute(2, 0, 1))  # (hw, b, dim)
        for layer in self.ft_layers:
            q = layer(q, pos)
        logits = self.idx_pred_layer(q).permute(1, 0, 2)  # (b, hw, n_codes)
        top_idx = logits.argmax(dim=2)  # == top-1 of the softmax
        quant = self.quantize.lookup(top_idx, b, h, wd).to(lq_feat.dtype)
        if adain:
            quant = _adain(quant, lq_feat)

        x = quant
        for i, block in enumerate(self.generator.blocks):
            x = block(x)
            if i in self._gen_taps and w > 0:
                s = self._gen_taps[i]
                x = self.fuse_convs_dict[s](enc_feats[s], x, w)
        return x


# --------------------------------------------------------------------------- loading


def unwrap_state_dict(obj: object) -> Mapping[str, torch.Tensor]:
    """The tensors of a checkpoint: the ``params_ema`` (preferred) or ``params`` dict, or the dict itself."""
    if isinstance(obj, Mapping):
        for key in ("params_ema", "params"):
            if key in obj and isinstance(obj[key], Mapping):
                return obj[key]
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise ModelError("codeformer.pth holds no state dict (expected a 'params_ema' or 'params' entry)",
                     FIX_REDOWNLOAD)


def _example(items: list[str], n: int = 2) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def check_state_dict(sd: Mapping[str, torch.Tensor], model: nn.Module | None = None,
                     name: str = "codeformer.pth") -> None:
    """Raise one ModelError if ``sd`` does not fit ``model`` (default: the official CodeFormer).

    Names missing and unexpected keys, pairs that look renamed (same shape, similar name)
    and shape mismatches, with a few examples of each and the fix.
    """
    expected = {k: tuple(v.shape) for k, v in (model or _reference_model()).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items() if isinstance(v, torch.Tensor)}
    not_tensors = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected)) + sorted(not_tensors)
    shapes = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])

    renamed: list[tuple[str, str]] = []
    for m in list(missing):
        cands = [u for u in unexpected if got.get(u) == expected[m]]
        best = difflib.get_close_matches(m, cands, n=1, cutoff=0.6)
        if best:
            renamed.append((best[0], m))
            missing.remove(m)
            unexpected.remove(best[0])
    if not (missing or unexpected or renamed or shapes):
        return
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} key{'s' if len(missing) != 1 else ''} (e.g. {_example(missing)})")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} (e.g. {_example(unexpected)})")
    if renamed:
        parts.append(f"renamed {len(renamed)} (e.g. " + _example([f"{a} -> {b}" for a, b in renamed]) + ")")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch{'es' if len(shapes) != 1 else ''} (e.g. "
                     + _example([f"{k} {list(got[k])} vs {list(expected[k])}" for k in shapes]) + ")")
    raise ModelError(f"{name} does not match the CodeFormer layout: " + ", ".join(parts), FIX_REDOWNLOAD)


_REFERENCE: dict[str, nn.Module] = {}


def _reference_model() -> nn.Module:
    """The official-layout network on the meta device (no memory, only names and shapes)."""
    if "m" not in _REFERENCE:
        with torch.device("meta"):
            _REFERENCE["m"] = CodeFormer()
    return _REFERENCE["m"]


def read_checkpoint(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors a person can act on."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist", "run `mirage models download codeformer`")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle errors, refused globals, truncated files
        msg = " ".join(str(exc).split())[:200]
        raise ModelError(f"{path.name} could not be read ({type(exc).__name__}: {msg}); the file is corrupt, "
                         f"truncated or not a plain weights file", FIX_REDOWNLOAD) from exc
    return unwrap_state_dict(obj)


def load_codeformer(path: str | os.PathLike, device: str | torch.device = "cpu", fp16: bool = False,
                    model: CodeFormer | None = None) -> CodeFormer:
    """Build (or fill ``model``), check and load the weights, move to ``device``, eval mode."""
    sd = read_checkpoint(path)
    net = model if model is not None else CodeFormer()
    check_state_dict(sd, net, name=Path(path).name)
    net.load_state_dict(sd, strict=True)
    net.eval().requires_grad_(False)
    net.to(device)
    if fp16:
        net.half()
    return net
