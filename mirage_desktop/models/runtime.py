"""One factory for onnxruntime sessions.

Execution providers are tried in order TensorRT → CUDA → DirectML → CoreML → CPU, limited to
what the installed onnxruntime offers (or the user's own list). A provider that fails to
initialise falls back to the next one with the reason logged; the provider actually used is
reported. On few CPU cores several sessions slow each other down when idle threads spin, so
spinning is switched off.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ModelError

log = logging.getLogger(__name__)

PREFERRED_ORDER = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "DmlExecutionProvider",
    "CoreMLExecutionProvider",
    "CPUExecutionProvider",
)
SHORT_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "directml": "DmlExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
GPU_PROVIDERS = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - a broken install
        raise ModelError("onnxruntime is not installed", "pip install onnxruntime (or onnxruntime-gpu)") from exc
    return ort


def available_providers() -> list[str]:
    return list(_ort().get_available_providers())


def resolve_providers(requested: str | Sequence[str] | None = "auto") -> list[str]:
    """The providers to try, in order: the user's list or our preference, filtered by what exists."""
    available = available_providers()
    if requested in (None, "", "auto"):
        wanted = list(PREFERRED_ORDER)
    else:
        items = requested.split(",") if isinstance(requested, str) else list(requested)
        wanted = [SHORT_NAMES.get(p.strip().lower(), p.strip()) for p in items if p.strip()]
        unknown = [p for p in wanted if p not in available]
        for p in unknown:
            log.warning("execution provider %s is not available in this onnxruntime (have: %s)",
                        p, ", ".join(available))
    chosen = [p for p in wanted if p in available]
    if "CPUExecutionProvider" not in chosen and "CPUExecutionProvider" in available:
        chosen.append("CPUExecutionProvider")
    return chosen


def _provider_options(provider: str, cache_dir: Path | None, fp16: bool) -> dict:
    if provider == "TensorrtExecutionProvider":
        opts = {"trt_fp16_enable": bool(fp16), "trt_engine_cache_enable": True}
        if cache_dir:
            opts["trt_engine_cache_path"] = str(cache_dir / "trt")
        return opts
    if provider == "CUDAExecutionProvider":
        # HEURISTIC avoids the multi-second EXHAUSTIVE search at start-up; arena grows as needed.
        return {"cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested"}
    if provider == "CoreMLExecutionProvider":
        return {}
    return {}


@dataclass
class SessionHandle:
    """An onnxruntime session plus what we learnt creating it."""

    session: Any
    path: Path
    provider: str
    fallback_reasons: list[str] = field(default_factory=list)
    # the inputs' shapes as the file declares them (None or a name for a free dimension), when the
    # session was made with some of them fixed (``create_session(static_inputs=...)``)
    declared_shapes: dict[str, list] = field(default_factory=dict)
    options: dict = field(default_factory=dict)  # how it was made, for :meth:`reshaped`
    # calls wait their turn at this gate (vision.cores: the detector and the swapper sharing few
    # CPU cores); ``gate_priority`` calls go before waiting ones
    gate: Any = None
    gate_priority: bool = False

    def reshaped(self, static_inputs: Mapping[str, Sequence[int]]) -> "SessionHandle":
        """The same model on the same providers with these input shapes fixed (a new session)."""
        h = create_session(self.path, self.options.get("providers", "auto"), static_inputs=static_inputs,
                           **{k: v for k, v in self.options.items() if k != "providers"})
        h.gate, h.gate_priority = self.gate, self.gate_priority
        return h

    @property
    def inputs(self):
        return self.session.get_inputs()

    @property
    def outputs(self):
        return self.session.get_outputs()

    @property
    def on_gpu(self) -> bool:
        return self.provider in GPU_PROVIDERS

    def warm_up(self) -> None:
        """One call on zeros of the declared shapes (a free dimension as 1): on a GPU the first
        call picks kernels and allocates (cuDNN, TensorRT), which must not fall on the first frame."""
        feeds = {i.name: np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in i.shape],
                                  _ORT_TYPES.get(i.type, np.float32)) for i in self.inputs}
        self.run(feeds)

    def input_dtype(self, name: str) -> type:
        for i in self.session.get_inputs():
            if i.name == name:
                return _ORT_TYPES.get(i.type, np.float32)
        raise KeyError(name)

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> list[np.ndarray]:
        """Run with inputs cast to the model's declared types (fp16 models take fp16 feeds).

        On CUDA/TensorRT the call goes through IO binding: inputs are bound from host memory and
        outputs are produced in device memory and copied back once, each call on its own binding
        (so several threads can run one session).
        """
        cast = {k: np.ascontiguousarray(v, dtype=self.input_dtype(k)) for k, v in feeds.items()}
        if not self.on_gpu:
            if self.gate is not None:
                with self.gate.turn(self.gate_priority, self.path.stem):
                    return self.session.run(output_names, cast)
            return self.session.run(output_names, cast)
        binding = self.session.io_binding()
        for k, v in cast.items():
            binding.bind_cpu_input(k, v)
        for o in output_names or [o.name for o in self.outputs]:
            binding.bind_output(o, "cuda")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


def _fix_input_shapes(path: Path, static_inputs: Mapping[str, Sequence[int]]) -> tuple[Path | bytes | None, dict]:
    """The model with the free dimensions of these inputs fixed (a cached file, or serialized
    when it cannot be cached), or None when they already are; and the shapes the file declares.
    A static shape lets onnxruntime plan memory and pick kernels once (the tiny SCRFD ran
    7.8 → 4.4 ms so)."""
    from . import derived

    key = json.dumps({k: list(v) for k, v in sorted(static_inputs.items())})
    meta_path = derived.derived_path(path, "static:" + key, ".json")
    meta = derived.load_json(meta_path)
    if meta is not None and meta_path is not None:
        fixed = meta_path.with_suffix(".onnx")
        if not meta.get("changed"):
            return None, meta["declared"]
        if fixed.is_file():
            return fixed, meta["declared"]
    model_bytes, declared = _fix_input_shapes_now(path, static_inputs)
    if meta_path is not None:
        if model_bytes is not None:
            derived.store(meta_path.with_suffix(".onnx"), model_bytes)
        derived.store(meta_path, json.dumps({"declared": declared, "changed": model_bytes is not None}).encode())
    return model_bytes, declared


def _fix_input_shapes_now(path: Path, static_inputs: Mapping[str, Sequence[int]]) -> tuple[bytes | None, dict]:
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise ModelError(f"model {path.name} could not be parsed ({' '.join(str(exc).split())[:200]})",
                         f"the file is corrupt or truncated: run `mirage models download --force` or delete {path}"
                         ) from exc
    declared, changed = {}, False
    first = model.graph.input[0].name if len(model.graph.input) else ""
    static_inputs = {(first if k == "*" else k): v for k, v in static_inputs.items()}  # "*": the first input
    for inp in model.graph.input:
        if inp.name not in static_inputs:
            continue
        dims = inp.type.tensor_type.shape.dim
        declared[inp.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
                              for d in dims]
        want = list(static_inputs[inp.name])
        if len(want) != len(dims):
            continue  # not the layout we know: leave it as it is
        for d, v in zip(dims, want):
            if not (d.HasField("dim_value") and d.dim_value > 0):
                d.Clear()
                d.dim_value = int(v)
                changed = True
    return (model.SerializeToString() if changed else None), declared


def create_session(path: str | os.PathLike, providers: str | Sequence[str] | None = "auto", *,
                   intra_threads: int | None = None, fp16: bool = True,
                   cache_dir: Path | None = None,
                   static_inputs: Mapping[str, Sequence[int]] | None = None) -> SessionHandle:
    """Load ``path`` on the best provider that works; raise ModelError naming the fix if none does.

    ``static_inputs``: fix the free dimensions of these inputs (where the input size is fixed; the
    name ``"*"`` stands for the first input)."""
    ort = _ort()
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist", "run `mirage models download --needed`")
    model_bytes, declared = _fix_input_shapes(path, static_inputs) if static_inputs else (None, {})
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.intra_op_num_threads = intra_threads or 0
    so.log_severity_level = 3
    reasons: list[str] = []
    if cache_dir is None:
        from ..config import cache_dir as _user_cache

        cache_dir = _user_cache()  # TensorRT engine cache: built once per model and GPU, then reused
    candidates = resolve_providers(providers)
    for i, prov in enumerate(candidates):
        chain = [(prov, _provider_options(prov, cache_dir, fp16))]
        if prov != "CPUExecutionProvider":
            chain.append(("CPUExecutionProvider", {}))  # for the odd op the GPU provider lacks
        try:
            model = model_bytes if isinstance(model_bytes, bytes) else str(model_bytes or path)
            sess = ort.InferenceSession(model, sess_options=so,
                                        providers=[p for p, _ in chain],
                                        provider_options=[o for _, o in chain])
        except Exception as exc:  # onnxruntime raises its own types; the message is what matters
            msg = " ".join(str(exc).split())[:300]
            if _looks_corrupt(msg):
                raise ModelError(f"model {path.name} could not be parsed ({msg})",
                                 f"the file is corrupt or truncated: run `mirage models download --force` "
                                 f"or delete {path}") from exc
            reasons.append(f"{prov}: {msg}")
            log.warning("could not start %s for %s: %s; trying the next provider", prov, path.name, msg)
            continue
        used = sess.get_providers()[0]
        if used != prov:
            reasons.append(f"{prov}: onnxruntime fell back to {used} (driver or library missing?)")
            log.warning("%s did not initialise for %s; using %s", prov, path.name, used)
        return SessionHandle(sess, path, used, reasons, declared,
                             {"providers": providers, "intra_threads": intra_threads, "fp16": fp16,
                              "cache_dir": cache_dir})
    raise ModelError(f"no execution provider could load {path.name}: " + "; ".join(reasons) if reasons
                     else f"no execution provider is available for {path.name}",
                     "run `mirage doctor`")


def _looks_corrupt(msg: str) -> bool:
    m = msg.lower()
    return any(s in m for s in ("protobuf parsing failed", "invalid_protobuf", "load model from", "no graph",
                                "failed to load model", "model_path", "invalid model"))
