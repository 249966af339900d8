"""`mirage serve` on loopback: the round trip a remote engine adds and where the CPU goes.

For 1, 2 and 4 concurrent sessions: the added round-trip latency (client capture -> swapped
frame back, measured per frame by a stamp drawn in the frame's corner) P50/P95, the FPS each
session gets back, and the server's CPU time per frame in video decode/encode versus inference.

    python scripts/bench_serve.py [--sessions 1,2,4] [--seconds 20] [--fps 30] [--realistic]

Tiny synthetic models with the real signatures by default (mirage_desktop/testing/face_models.py;
--realistic gives them the published compute). The clients run in a child process so the
server's threads can be told apart: decode is aiortc's "video-decoder" threads, encode its
executor threads ("asyncio_*"), inference the pipeline's worker and detector threads, and the
server loop (RTP, SRTP, colour conversion) its own. Figures depend on the machine: say which.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package, also when another one is installed
SECRET = b"bench-secret-0123456789abcdef-0123456789"


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) per thread category of this process, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for t in threading.enumerate():
        tid = t.native_id
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, TypeError):
            continue
        cpu = (int(fields[11]) + int(fields[12])) / tick
        name = t.name
        if name.endswith("-decoder"):
            cat = "decode"
        elif name.startswith("asyncio_"):
            cat = "encode"
        elif name in ("mirage-worker", "mirage-detector"):
            cat = "inference"
        elif name in ("mirage-capture", "mirage-output"):
            cat = "pipeline hand-offs"
        elif name == "mirage-serve":
            cat = "server loop (RTP, SRTP, conversion)"
        else:
            cat = "other"
        out[cat] = out.get(cat, 0.0) + cpu
    return out


def frame_and_models(width: int, height: int, realistic: bool, workdir: Path):
    from mirage_desktop.commands.bench import make_frame
    from mirage_desktop.testing import face_models as synthetic

    frame, faces = make_frame(1, width, height)
    scripted = synthetic.scripted_faces_for_image(frame.shape, faces, 640)
    paths = synthetic.build_model_set(workdir, scripted, 640, realistic=realistic)
    return frame, {"det_10g": paths["det_10g"], "w600k_r50": paths["w600k_r50"],
                   "inswapper_128": paths["inswapper_128"]}


# ---- the client process ---------------------------------------------------------------------------
async def clients(url: str, token: str, n: int, seconds: float, fps: float, frame_path: str, photo_path: str) -> dict:
    import cv2

    from mirage_desktop.serve.client import FeedTrack, RemoteSession, read_stamp, stamp
    from mirage_desktop.serve.tracks import restrict_ice_addresses

    restrict_ice_addresses(["127.0.0.1"])
    base = cv2.imread(frame_path)
    photo = Path(photo_path).read_bytes()
    results = []
    sessions = []
    for i in range(n):
        sent: dict[int, float] = {}
        lat: list[float] = []
        back: list[float] = []
        state = {"measuring": False}

        def on_sent(k, t, sent=sent):
            sent[k % 4096] = t

        def on_frame(img, t, sent=sent, lat=lat, back=back, state=state):
            if not state["measuring"]:
                return
            k = read_stamp(img)
            t0 = sent.pop(k, None)
            if t0 is not None and t - t0 < 5.0:
                lat.append((t - t0) * 1000)
            back.append(t)

        track = FeedTrack(lambda k: stamp(base.copy(), k), fps=fps, on_sent=on_sent)
        rs = RemoteSession(url, token, on_frame=on_frame)
        await rs.connect(track, photo=photo, consent=True)
        sessions.append((rs, lat, back, state))
    # warm up: every session has frames back
    t_end = time.monotonic() + 120
    while any(rs.frames_received < 10 for rs, *_ in sessions) and time.monotonic() < t_end:
        await asyncio.sleep(0.1)
    for *_, state in sessions:
        state["measuring"] = True
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - t0
    for rs, lat, back, state in sessions:
        state["measuring"] = False
        results.append({"latency_ms": lat, "fps": len(back) / elapsed})
        await rs.close()
    return {"sessions": results}


def client_main(argv: list[str]) -> int:
    url, token, n, seconds, fps, frame_path, photo_path = argv
    res = asyncio.run(clients(url, token, int(n), float(seconds), float(fps), frame_path, photo_path))
    print(json.dumps(res))
    return 0


# ---- the server side ------------------------------------------------------------------------------
def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        return client_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", default="1,2,4")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured per run, after a warm-up")
    ap.add_argument("--fps", type=float, default=30.0, help="each client's camera rate")
    ap.add_argument("--width", type=int, default=480)
    ap.add_argument("--height", type=int, default=270)
    ap.add_argument("--realistic", action="store_true", help="published-size compute in the synthetic models")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import logging

    import cv2

    from mirage_desktop.config import Settings
    from mirage_desktop.engine import Engine
    from mirage_desktop.serve.app import AppThread, ServeConfig, Server
    from mirage_desktop.serve.auth import make_token
    from mirage_desktop.serve.tracks import restrict_ice_addresses

    logging.basicConfig(level=logging.ERROR)
    restrict_ice_addresses(["127.0.0.1"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        frame, models = frame_and_models(args.width, args.height, args.realistic, work / "models")
        cv2.imwrite(str(work / "frame.png"), frame)
        from mirage_desktop.commands.bench import make_frame

        big = make_frame(1, args.width * 4, args.height * 4)[0]  # the same layout, large enough for a photo
        cv2.imwrite(str(work / "photo.jpg"), big[:, ::-1])
        shared = Engine(Settings(), model_overrides=models)
        shared.load_models()
        token = make_token(SECRET, 3600)
        for n in [int(x) for x in args.sessions.split(",")]:
            server = Server(ServeConfig(secret=SECRET, port=0, max_sessions=n, max_width=1920, max_height=1080),
                            shared)
            t = AppThread(server.make_app, "127.0.0.1", 0).start()
            cpu0 = thread_cpu()
            out0 = 0
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
            proc = subprocess.Popen([sys.executable, __file__, "--client", t.url, token, str(n), str(args.seconds),
                                     str(args.fps), str(work / "frame.png"), str(work / "photo.jpg")],
                                    stdout=subprocess.PIPE, text=True, env=env)
            # CPU is counted from when every session streams: sample once they all have output
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and (len(server.sessions) < n or any(
                    s.metrics.counter("frames.out") < 10 for s in list(server.sessions.values()))):
                time.sleep(0.1)
            cpu0 = thread_cpu()
            out0 = sum(s.metrics.counter("frames.out") for s in server.sessions.values())
            live = list(server.sessions.values())
            time.sleep(args.seconds * 0.9)  # inside the client's measured window
            cpu1 = thread_cpu()
            out1 = sum(s.metrics.counter("frames.out") for s in live)
            stdout, _ = proc.communicate(timeout=300)
            res = json.loads(stdout.strip().splitlines()[-1])
            frames = max(1, out1 - out0)
            cpu_ms = {k: (cpu1.get(k, 0.0) - cpu0.get(k, 0.0)) * 1000 / frames for k in cpu1}
            lat = np.concatenate([np.asarray(s["latency_ms"], float) for s in res["sessions"]] or [np.zeros(0)])
            rows.append({"sessions": n, "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
                         "p95_ms": float(np.percentile(lat, 95)) if lat.size else None,
                         "fps_per_session": [round(s["fps"], 1) for s in res["sessions"]],
                         "frames_measured": int(lat.size), "cpu_ms_per_frame": {k: round(v, 2) for k, v in
                                                                               sorted(cpu_ms.items())}})
            t.call(server.close_all("bench over"))
            t.stop()
    print(f"mirage serve on loopback, {args.width}x{args.height} at {args.fps:g} FPS per client, "
          f"{'realistic' if args.realistic else 'tiny'} synthetic models; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{'sessions':>8} {'RTT P50 ms':>11} {'RTT P95 ms':>11}  FPS back per session   server CPU ms per frame")
    for r in rows:
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_ms_per_frame"].items() if v > 0.05)
        p50 = f"{r['p50_ms']:.0f}" if r["p50_ms"] is not None else "n/a"
        p95 = f"{r['p95_ms']:.0f}" if r["p95_ms"] is not None else "n/a"
        print(f"{r['sessions']:>8} {p50:>11} {p95:>11}  {', '.join(map(str, r['fps_per_session'])):<22} {cpu}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
