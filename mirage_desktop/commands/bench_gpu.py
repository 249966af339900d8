"""`mirage bench --providers cuda|tensorrt --json PATH`: the GPU suite, unattended, one JSON report.

Runs start to finish with only the repo (synthetic models of the real signatures at the published
compute, built here) and writes:

- ``stages``: each model's own time per call (detector, recognizer, swapper), fp32 and fp16;
- ``swapper_paths``: the swapper called three ways — plain ``session.run`` (host in, host out),
  IO binding with the inputs and outputs kept on the device, and IO binding plus CUDA graphs
  (one captured graph replayed per call; Deep-Live-Cam's fastest path);
- ``end_to_end``: the real pipeline at 1280x720 and 1920x1080 with 1 and 6 faces: FPS and
  capture-to-output latency P50/P95, swapped faces per frame, GPU utilisation and memory (NVML);
- ``first_swapped_frame``: ``mirage run`` in a fresh process, cold (empty caches: TensorRT
  builds its engines) and warm (the engine cache and the derived-model cache reused).

What cannot run on this machine is listed under ``skipped`` with the reason (on a machine without
the provider the GPU parts are skipped and the rest runs on the CPU with tiny models, so the
suite still finishes in minutes and says so).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

SIZES = ((1280, 720), (1920, 1080))
FACES = (1, 6)


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms, np.float64)
    return {"n": int(a.size), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "mean": float(a.mean())}


def _time_calls(fn, n: int, warm: int = 3) -> dict:
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1000)
    return _stats(ts)


class NvmlSampler:
    """GPU utilisation and memory of device 0, sampled every 100 ms while running."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            self._nv = pynvml
            self._h = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception as exc:
            self.error = f"NVML is not available ({type(exc).__name__}: {exc}); pip install nvidia-ml-py"

    def __enter__(self):
        if self.error is None:
            self._thread = threading.Thread(target=self._loop, name="mirage-nvml", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                u = self._nv.nvmlDeviceGetUtilizationRates(self._h)
                m = self._nv.nvmlDeviceGetMemoryInfo(self._h)
                self.samples.append((float(u.gpu), m.used / 2**20))
            except Exception as exc:
                self.error = f"NVML query failed: {exc}"
                return
            self._stop.wait(0.1)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)

    def result(self) -> dict:
        if not self.samples:
            return {"skipped": self.error or "no NVML sample"}
        u = [s[0] for s in self.samples]
        mem = [s[1] for s in self.samples]
        return {"gpu_util_pct_mean": float(np.mean(u)), "gpu_util_pct_p95": float(np.percentile(u, 95)),
                "memory_used_mb_max": float(max(mem)), "samples": len(u)}


def swapper_paths(path: Path, provider: str, skipped: list, n: int) -> dict:
    """The swapper's call cost three ways (see the module's doc)."""
    from ..models.runtime import _ort, create_session

    out: dict = {}
    h = create_session(path, provider)
    dt = h.input_dtype("target")
    target = np.random.default_rng(0).random((1, 3, 128, 128)).astype(dt)
    source = np.random.default_rng(1).random((1, 512)).astype(dt)
    name = h.outputs[0].name
    out["session.run"] = _time_calls(lambda: h.session.run([name], {"target": target, "source": source}), n)
    out["session.run"]["provider"] = h.provider
    if h.provider not in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        why = f"the swapper runs on {h.provider}: IO binding to device memory and CUDA graphs need CUDA"
        if not any(s["why"] == why for s in skipped):
            skipped.append({"what": "swapper IO binding and CUDA graphs", "why": why})
        out["io_binding"] = out["cuda_graph"] = {"skipped": why}
        return out
    ort = _ort()

    def bound(sess):
        b = sess.io_binding()
        t_dev = ort.OrtValue.ortvalue_from_numpy(target, "cuda", 0)
        s_dev = ort.OrtValue.ortvalue_from_numpy(source, "cuda", 0)
        o_dev = ort.OrtValue.ortvalue_from_shape_and_type([1, 3, 128, 128], dt, "cuda", 0)
        b.bind_ortvalue_input("target", t_dev)
        b.bind_ortvalue_input("source", s_dev)
        b.bind_ortvalue_output(name, o_dev)
        return b, (t_dev, s_dev, o_dev)

    b, keep = bound(h.session)
    out["io_binding"] = _time_calls(lambda: h.session.run_with_iobinding(b), n)
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        opt = {"enable_cuda_graph": "1"} if provider == "CUDAExecutionProvider" else {"trt_cuda_graph_enable": "1"}
        g = ort.InferenceSession(str(path), sess_options=so, providers=[provider, "CPUExecutionProvider"],
                                 provider_options=[opt, {}])
        gb, gkeep = bound(g)
        out["cuda_graph"] = _time_calls(lambda: g.run_with_iobinding(gb), n)
    except Exception as exc:
        why = " ".join(str(exc).split())[:200]
        skipped.append({"what": "swapper CUDA graphs", "why": why})
        out["cuda_graph"] = {"skipped": why}
    return out


def stage_times(paths: dict, provider: str, det_size: int, n: int) -> dict:
    from ..models.runtime import create_session

    rng = np.random.default_rng(0)
    det = create_session(paths["det_10g"], provider, static_inputs={"*": [1, 3, det_size, det_size]})
    rec = create_session(paths["w600k_r50"], provider)
    sw = create_session(paths["inswapper_128"], provider)
    x = rng.random((1, 3, det_size, det_size)).astype(np.float32)
    f = rng.random((1, 3, 112, 112)).astype(np.float32)
    t, s = rng.random((1, 3, 128, 128)), rng.random((1, 512))
    return {"provider": sw.provider,
            "det_10g": _time_calls(lambda: det.run({det.inputs[0].name: x}), n),
            "w600k_r50": _time_calls(lambda: rec.run({rec.inputs[0].name: f}), n),
            "inswapper_128": _time_calls(lambda: sw.run({"target": t, "source": s}), n)}


def first_swapped(workdir: Path, paths: dict, provider: str, precision: str, frame: np.ndarray) -> dict:
    """``mirage run`` in a fresh process, twice: with empty caches, then with them filled."""
    clip = workdir / "first.mp4"
    w = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 30, (frame.shape[1], frame.shape[0]))
    for _ in range(90):
        w.write(frame)
    w.release()
    photo = workdir / "source.png"
    cv2.imwrite(str(photo), frame)
    cache = workdir / "cache"
    env = dict(os.environ, MIRAGE_CACHE_DIR=str(cache))
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    swap_name = "inswapper_128_fp16" if precision == "fp16" else "inswapper_128"
    cmd = [sys.executable, "-m", "mirage_desktop", "run", "--input", str(clip), "--output", "null", "--frames", "60",
           "--providers", provider, "--swapper-precision", precision, "--source", str(photo), "--confirm-rights",
           "--model", f"det_10g={paths['det_10g']}", "--model", f"w600k_r50={paths['w600k_r50']}",
           "--model", f"{swap_name}={paths['inswapper_128']}"]
    out = {}
    for run in ("cold", "warm"):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, stdin=subprocess.DEVNULL)
        line = next((x for x in r.stderr.splitlines() if x.startswith("first swapped frame")), None)
        if r.returncode != 0 or line is None:
            out[run] = {"error": (r.stderr.strip().splitlines() or ["no output"])[-1][:300], "rc": r.returncode}
            continue
        words = line.split()
        out[run] = {"seconds": float(words[3]), "line": line}
    out["trt_engine_cache"] = str(cache / "trt") if provider == "TensorrtExecutionProvider" else "n/a"
    return out


def run_suite(args) -> int:
    from ..models.runtime import SHORT_NAMES, available_providers
    from ..testing import face_models as synthetic
    from .bench import make_frame, run_scenario

    t_start = time.perf_counter()
    if not args.json:
        raise SystemExit("mirage bench: the GPU suite writes one report: give --json PATH")
    provider = SHORT_NAMES.get(args.providers.split(",")[0].strip().lower(), args.providers)
    have = available_providers()
    skipped: list[dict] = []
    on_gpu = provider in have
    if not on_gpu:
        why = (f"{provider} is not in this onnxruntime (has {', '.join(have)}): install onnxruntime-gpu and the "
               "CUDA/TensorRT libraries; the rest of the suite ran on the CPU with tiny models")
        skipped.append({"what": "everything on the GPU", "why": why})
        print(f"mirage bench: {why}", file=sys.stderr)
        run_on = "CPUExecutionProvider"
    else:
        run_on = provider
    gmac = dict(synthetic.PUBLISHED_GMAC) if on_gpu else {k: 0.0 for k in synthetic.PUBLISHED_GMAC}
    n_calls = 50 if on_gpu else 10
    frames = args.frames if args.frames != 150 else (120 if on_gpu else 10)
    report: dict = {"provider_requested": provider, "providers_available": have, "ran_on": run_on,
                    "compute_gmac": {k: synthetic.trunk_gmac({"det_10g": args.det_size, "w600k_r50": 112,
                                                              "inswapper_128": 128}[k], v) for k, v in gmac.items()},
                    "skipped": skipped, "stages": {}, "swapper_paths": {}, "end_to_end": []}
    nv = NvmlSampler()
    if nv.error:
        skipped.append({"what": "GPU utilisation and memory", "why": nv.error})
    with tempfile.TemporaryDirectory(prefix="mirage-gpubench-") as tmp:
        work = Path(tmp)
        frame1, faces1 = make_frame(1, 1280, 720)
        scripted = synthetic.scripted_faces_for_image(frame1.shape, faces1, args.det_size)
        sets = {}
        for prec in ("fp32", "fp16"):
            sets[prec] = synthetic.build_model_set(work / prec, scripted, args.det_size, gmac=gmac,
                                                   swapper_fp16=prec == "fp16")
            try:
                report["stages"][prec] = stage_times(sets[prec], run_on, args.det_size, n_calls)
                report["swapper_paths"][prec] = swapper_paths(sets[prec]["inswapper_128"], run_on, skipped, n_calls)
            except Exception as exc:
                why = " ".join(str(exc).split())[:300]
                report["stages"][prec] = {"skipped": why}
                skipped.append({"what": f"{prec} stage times", "why": why})
            print(f"mirage bench: {prec} stage times done", file=sys.stderr)
        for (w, h) in SIZES:
            for n in FACES:
                for prec in (("fp16", "fp32") if (w, h, n) == (1280, 720, 1) else ("fp16",)):
                    sa = argparse.Namespace(**vars(args))
                    sa.width, sa.height, sa.frames, sa.source_fps = w, h, frames, 0.0
                    # the recognizer and swapper files are shared across scenarios (one TensorRT
                    # engine each); only the scripted detector follows the frame's faces
                    sa.providers, sa.clip, sa.models = run_on, None, "synthetic"
                    sa.model = [f"w600k_r50={sets[prec]['w600k_r50']}", f"inswapper_128={sets[prec]['inswapper_128']}"]
                    sa.compute = "realistic" if on_gpu else "tiny"
                    sa.swap_gmac, sa.swapper_precision = None, prec
                    with NvmlSampler() as s:
                        r = run_scenario(n, sa, work / f"e2e-{w}-{n}-{prec}")
                    tot = r["stages"].get("total", {})
                    report["end_to_end"].append({
                        "size": r["size"], "faces": n, "precision": prec, "fps": r["fps"],
                        "latency_ms_p50": tot.get("p50"), "latency_ms_p95": tot.get("p95"),
                        "faces_swapped_per_frame": r["faces_swapped_per_frame"], "frames": r["frames_measured"],
                        "first_swapped_s": r["first_swapped_s"], "provider": r["provider"],
                        "swap_model_ms_p50": r["stages"].get("swap.model", {}).get("p50"), "nvml": s.result()})
                    print(f"mirage bench: {r['size']} {n} face(s) {prec}: {r['fps']:.1f} FPS, latency P50 "
                          f"{tot.get('p50') or 0:.1f} ms, {r['faces_swapped_per_frame']:.2f} faces/frame",
                          file=sys.stderr)
        report["first_swapped_frame"] = first_swapped(work, sets["fp16"], run_on, "fp16", frame1)
    report["seconds"] = time.perf_counter() - t_start
    from ..fsutil import atomic_write_text

    atomic_write_text(args.json, json.dumps(report, indent=1), "results file")
    fs = report["first_swapped_frame"]
    print(f"mirage bench: GPU suite on {run_on} in {report['seconds']:.0f} s -> {args.json}; first swapped frame cold "
          f"{fs.get('cold', {}).get('seconds', 'n/a')} s, warm {fs.get('warm', {}).get('seconds', 'n/a')} s; "
          f"skipped: {len(skipped)} part(s)" + "".join(f"\n  skipped {s['what']}: {s['why']}" for s in skipped))
    bad = [e for e in report["end_to_end"] if e["faces_swapped_per_frame"] < e["faces"]]
    errs = [k for k in ("cold", "warm") if "error" in fs.get(k, {})]
    for e in bad:
        print(f"mirage bench: {e['size']} {e['faces']} face(s): only {e['faces_swapped_per_frame']:.2f} faces swapped "
              "per frame; the figures overstate", file=sys.stderr)
    for k in errs:
        print(f"mirage bench: the {k} `mirage run` failed: {fs[k]['error']}", file=sys.stderr)
    return 1 if bad or errs else 0
