"""Model contracts: what each model's inputs and outputs must look like, checked at load.

A file with the right name but the wrong network (another export, a truncated graph, a user's
``--model`` file for the wrong slot) is refused when it is loaded, with one line naming the
expected and the actual shapes, instead of failing on every frame or, worse, producing a wrong
picture. The caller turns the refusal into a pass-through reason.

Dimensions: an ``int`` must match exactly; a name (``"N"``, ``"H"``) matches anything the model
declares there, and the same name must match the same value within one contract when both are
known (``inswapper``'s output size follows its target size). A model that leaves a dimension
open (dynamic) gets one probe run with plain inputs (0.5 everywhere) of the contract's probe sizes, and the real
output shapes are checked: dynamic exports cannot hide a wrong output that way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ModelError

Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[Dim, ...] | None  # None: any shape (a scalar option input)
    name: str | None = None  # the input must have this name; None: matched by position


@dataclass(frozen=True)
class Contract:
    model: str  # its name in models.toml, e.g. "inswapper_128"
    kind: str  # what it does, e.g. "face swapper (inswapper)"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...] | None = None  # None: see ``each_output_last``
    output_counts: tuple[int, ...] = ()  # allowed numbers of outputs (empty: len(outputs))
    each_output_last: tuple[int, ...] = ()  # every output is ?x..xK with K in these (SCRFD: 1, 4, 10)
    probe: Mapping[str, int] = field(default_factory=dict)  # sizes for open dims in a probe run
    fix: str = ""

    def refuse(self, path: Any, what: str) -> ModelError:
        name = getattr(path, "name", None) or str(path)
        return ModelError(f"{name} is not a {self.kind} model: {what}",
                          self.fix or f"use {self.model} from models.toml (`mirage models download --force "
                                      f"{self.model}`), or a --model file with its signature")


def fmt_shape(shape: Sequence[Any] | None) -> str:
    if shape is None:
        return "unknown"
    return "x".join(str(d) if isinstance(d, int) and d >= 0 else (str(d) if isinstance(d, str) and d else "?")
                    for d in shape) or "scalar"


def _known(d: Any) -> bool:
    return isinstance(d, int) and d >= 0


def _match_shape(spec: Sequence[Dim] | None, actual: Sequence[Any] | None, env: dict[str, int]) -> bool:
    if spec is None:
        return True
    if actual is None or len(actual) != len(spec):
        return False
    for want, got in zip(spec, actual):
        if isinstance(want, int):
            if _known(got) and got != want:
                return False
        elif _known(got):
            if env.setdefault(want, int(got)) != int(got):
                return False
    return True


def _ordered_inputs(contract: Contract, inputs: Sequence[Any]) -> list[Any]:
    by_name = {i.name: i for i in inputs}
    if all(s.name for s in contract.inputs):
        return [by_name.get(s.name) for s in contract.inputs]
    return list(inputs)


def check(handle: Any, contract: Contract, outputs: list[int] | None = None) -> dict[str, int]:
    """Check a session handle (``inputs``/``outputs``/``run``/``path``) against ``contract``.
    ``outputs``: which of the model's outputs the contract's outputs describe, in order (default:
    the first ones), for exports whose result is not their first output.

    Returns the sizes the named dimensions took (``{"S": 128}``). Raises the contract's
    ModelError naming expected and actual shapes."""
    ins, all_outs = list(handle.inputs), list(handle.outputs)
    pick = outputs if outputs is not None else list(range(len(all_outs)))
    outs = [all_outs[i] for i in pick]
    path = getattr(handle, "path", contract.model)
    want_in = ", ".join(f"{s.name + ' ' if s.name else ''}{fmt_shape(s.shape) if s.shape else 'any'}"
                        for s in contract.inputs)
    got_in = ", ".join(f"{i.name} {fmt_shape(i.shape)}" for i in ins)
    if len(ins) != len(contract.inputs):
        raise contract.refuse(path, f"it has {len(ins)} input(s) ({got_in}); expected {want_in}")
    env: dict[str, int] = {}
    ordered = _ordered_inputs(contract, ins)
    for spec, inp in zip(contract.inputs, ordered):
        if inp is None:
            raise contract.refuse(path, f"its inputs are {got_in}; expected {want_in}")
        if not _match_shape(spec.shape, inp.shape, env):
            raise contract.refuse(path, f"input {inp.name!r} is {fmt_shape(inp.shape)}, expected "
                                        f"{fmt_shape(_resolve(spec.shape, env))}")
    counts = contract.output_counts or ((len(contract.outputs),) if contract.outputs else ())
    if counts and len(all_outs) not in counts:
        raise contract.refuse(path, f"it has {len(all_outs)} output(s); expected "
                                    f"{' or '.join(str(c) for c in counts)}")
    _check_outputs(contract, path, [o.shape for o in outs], env)
    if any(not _known(d) for i in ins for d in (i.shape or [None])) or \
            any(not _known(d) for o in outs for d in (o.shape or [None])):
        _probe(handle, contract, ordered, env, path, pick)
    return env


def _resolve(shape: Sequence[Dim] | None, env: Mapping[str, int]) -> tuple | None:
    return None if shape is None else tuple(env.get(d, d) if isinstance(d, str) else d for d in shape)


def _check_outputs(contract: Contract, path: Any, shapes: list, env: dict[str, int]) -> None:
    if contract.outputs is not None:
        for k, (spec, shape) in enumerate(zip(contract.outputs, shapes)):
            if not _match_shape(spec.shape, shape, env):
                raise contract.refuse(path, f"output {k} is {fmt_shape(shape)}, expected "
                                            f"{fmt_shape(_resolve(spec.shape, env))}")
    last = contract.each_output_last
    if last:
        for shape in shapes:
            if shape is None or len(shape) not in (2, 3) or (_known(shape[-1]) and shape[-1] not in last):
                raise contract.refuse(path, f"an output is {fmt_shape(shape)}; expected ?x"
                                            f"{' or ?x'.join(str(v) for v in last)}")


MAX_PROBE_ELEMENTS = 64 << 20  # 256 MB of float32: far above any real model's input


def _probe(handle: Any, contract: Contract, ordered: list, env: dict[str, int], path: Any,
           pick: list[int]) -> None:
    """One run with zeros where the model leaves dimensions open; check the real output shapes."""
    sizes = {**contract.probe, **env}
    feeds = {}
    for spec, inp in zip(contract.inputs, ordered):
        shape = []
        declared = list(inp.shape or [])
        for k, got in enumerate(declared):
            want = spec.shape[k] if spec.shape is not None else None
            if _known(got):
                shape.append(int(got))
            elif isinstance(want, int):
                shape.append(want)
            else:
                shape.append(int(sizes.get(want, 1)) if isinstance(want, str) else 1)
        if int(np.prod(shape, dtype=np.float64)) > MAX_PROBE_ELEMENTS:
            raise contract.refuse(path, f"input {inp.name!r} is {fmt_shape(shape)}, far larger than any "
                                        f"{contract.kind} takes")
        feeds[inp.name] = np.full(shape, 0.5, np.float32)  # mid-grey / a plain vector: finite for any net
    try:
        results = handle.run(feeds)
    except ModelError:
        raise
    except Exception as exc:  # onnxruntime's own error types (and MemoryError); the message is what counts
        raise contract.refuse(path, "a test run with inputs "
                                    f"{', '.join(f'{k} {fmt_shape(v.shape)}' for k, v in feeds.items())} failed "
                                    f"({' '.join(str(exc).split())[:160]})") from None
    probe_env = dict(sizes)
    results = [results[i] for i in pick]
    _check_outputs(contract, path, [list(np.shape(r)) for r in results], probe_env)
    for r in results:
        if not np.all(np.isfinite(np.asarray(r, np.float32))):
            raise contract.refuse(path, "a test run on plain inputs gave NaN or infinite values")


# ---- the contracts of the models Mirage runs ------------------------------------------------------

SCRFD = Contract(  # outputs: per stride, anchors x {1 score, 4 box, 10 keypoints}
    "det_10g", "face detector (SCRFD)", inputs=(TensorSpec((1, 3, "H", "W")),),
    outputs=None, output_counts=(6, 9), each_output_last=(1, 4, 10), probe={"H": 640, "W": 640},
    fix="use det_10g.onnx from buffalo_l (`mirage models download --force buffalo_l`)")

ARCFACE = Contract(
    "w600k_r50", "face recognizer (ArcFace, 512-d)", inputs=(TensorSpec(("N", 3, 112, 112)),),
    outputs=(TensorSpec(("N", 512)),),
    probe={"N": 1},
    fix="use w600k_r50.onnx from buffalo_l (`mirage models download --force buffalo_l`)")

INSWAPPER = Contract(
    "inswapper_128", "face swapper (inswapper)",
    inputs=(TensorSpec((1, 3, "S", "S"), name="target"), TensorSpec((1, 512), name="source")),
    outputs=(TensorSpec((1, 3, "S", "S")),), probe={"S": 128},
    fix="use inswapper_128 from models.toml (`mirage models download --force inswapper_128`)")


def enhancer_contract(model: str, image_input: str, weight_input: str | None = None) -> Contract:
    """GFPGAN / CodeFormer ONNX: 1x3xSxS image (plus an optional scalar fidelity) → 1x3xSxS."""
    inputs = [TensorSpec((1, 3, "S", "S"), name=image_input)]
    if weight_input:
        inputs.append(TensorSpec(None, name=weight_input))
    # some exports add side outputs (CodeFormer's code logits): the caller says which is the image
    return Contract(model, "face enhancer", inputs=tuple(inputs), outputs=(TensorSpec((1, 3, "S", "S")),),
                    output_counts=(1, 2, 3),
                    probe={"S": 512},
                    fix=f"use {model} from models.toml (`mirage models download --force {model}`)")


PARSER = Contract(  # FaceFusion's bisenet_resnet_18/34 exports: 19 CelebAMask-HQ classes per pixel
    "bisenet_resnet_18", "face parser (BiSeNet, 19 classes)", inputs=(TensorSpec((1, 3, 512, 512)),),
    outputs=(TensorSpec((1, 19, "H", "W")),), output_counts=(1, 2, 3), probe={},
    fix="use bisenet_resnet_18 or bisenet_resnet_34 from models.toml "
        "(`mirage models download bisenet_resnet_18`), or a --model file with its signature")
