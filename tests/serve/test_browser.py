"""The browser client in a real headless Chromium (Debian's), its camera a fake device playing a
clip of the test face: pick a photo, confirm consent, start; the page shows swapped frames.
Driven over the DevTools protocol (aiohttp's websocket client); every wait is the page's own
promise, bounded by the hang guard."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from serve_support import SIZE, changed_mask, expected_swap, jpeg, mean_diff
from tests_support import HANG_GUARD_S

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def write_y4m(path: Path, frame: np.ndarray, n: int = 30) -> Path:
    """A YUV4MPEG2 clip (4:2:0) of ``frame``, what Chromium's fake camera plays in a loop."""
    h, w = frame.shape[:2]
    i420 = cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420)
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F30:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(n):
            f.write(b"FRAME\n")
            f.write(i420.tobytes())
    return path


class DevTools:
    def __init__(self, ws):
        self.ws, self.ids = ws, itertools.count(1)

    async def call(self, method: str, **params):
        i = next(self.ids)
        await self.ws.send_json({"id": i, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=HANG_GUARD_S)
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def js(self, expr: str, await_promise: bool = False):
        r = await self.call("Runtime.evaluate", expression=expr, awaitPromise=await_promise, returnByValue=True,
                            timeout=int(HANG_GUARD_S * 1000))
        if "exceptionDetails" in r:
            raise RuntimeError(json.dumps(r["exceptionDetails"])[:500])
        return r["result"].get("value")


def _wait_js(cond: str) -> str:
    """A page-side promise resolving once ``cond`` holds (checked every animation frame)."""
    return ("new Promise((ok, fail) => { const t0 = performance.now(); const f = () => { "
            f"if ({cond}) ok(true); else if (performance.now() - t0 > {HANG_GUARD_S * 1000}) "
            "fail(new Error('timed out: ' + (window.mirage && (window.mirage.error || window.mirage.closedReason)))); "
            "else setTimeout(f, 50); }; f(); })")


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (scripts/setup-env.sh)")
def test_the_browser_client_shows_swapped_frames(serve, token, client_loop, frame, astronaut, shared_engine,
                                                 tmp_path):
    import aiohttp

    t, server = serve(max_width=1280, max_height=720)
    clip = write_y4m(tmp_path / "clip.y4m", frame)
    photo = jpeg(astronaut[:, ::-1].copy())
    (tmp_path / "me.jpg").write_bytes(photo)
    proc = subprocess.Popen([
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={clip}",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
        "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required",
        f"--user-data-dir={tmp_path / 'profile'}", "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ws_url = None
        for line in proc.stderr:  # Chromium says where DevTools listens, then keeps logging
            if line.startswith("DevTools listening on "):
                ws_url = line.split(" on ", 1)[1].strip()
                break
        assert ws_url, f"chromium did not start (exit {proc.poll()})"
        port = int(ws_url.split(":")[2].split("/")[0])

        async def drive():
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                    page = next(p for p in await r.json() if p["type"] == "page")
                async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    dt = DevTools(ws)
                    await dt.call("Page.enable")
                    await dt.call("Page.navigate", url=f"{t.url}/#token={token}")
                    await dt.js(_wait_js("document.readyState === 'complete' && window.mirage"), True)
                    doc = await dt.call("DOM.getDocument")
                    node = await dt.call("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector="#photo")
                    await dt.call("DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(tmp_path / "me.jpg")])
                    assert await dt.js("document.getElementById('start').disabled")  # no consent, no start
                    await dt.js("(() => { const c = document.getElementById('consent'); c.checked = true; "
                                "c.dispatchEvent(new Event('change')); })()")
                    assert not await dt.js("document.getElementById('start').disabled")
                    await dt.js("document.getElementById('start').click()")
                    await dt.js(_wait_js("window.mirage.shown >= 20 && window.mirage.server && "
                                         "window.mirage.server.swapped > 5"), True)
                    shot = await dt.js("window.mirage.grab()")
                    stats = await dt.js("({rtt: window.mirage.rtt, text: document.getElementById('proc').textContent,"
                                        " shown: window.mirage.shown})")
                    # the voice toggle: the fake microphone's voice is converted on the server, said on the page
                    await dt.js("(() => { const c = document.getElementById('voiceOn'); c.checked = true; "
                                "c.dispatchEvent(new Event('change')); })()")
                    await dt.js(_wait_js("window.mirage.voice && window.mirage.voice.enabled && "
                                         "window.mirage.voice.converting"), True)
                    stats["voice_text"] = await dt.js("document.getElementById('voiceState').textContent")
                    (s,) = server.sessions.values()
                    stats["voice"] = s.voice.status()
                    return shot, stats

        shot, stats = client_loop.run(drive(), timeout=HANG_GUARD_S * 2)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        proc.stderr.close()
    assert shot and shot.startswith("data:image/png;base64,")
    img = cv2.imdecode(np.frombuffer(base64.b64decode(shot.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    if img.shape[:2] != (SIZE, SIZE):  # the browser may send a scaled-down camera
        img = cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    want = expected_swap(shared_engine, frame, photo)
    mask = changed_mask(want, frame)
    assert mean_diff(img, want, mask) < 0.5 * mean_diff(img, frame, mask)  # the page shows the swapped face
    assert stats["rtt"] is not None and stats["rtt"] > 0 and "ms" in stats["text"]
    assert server.opened_total == 1
    assert stats["voice"]["converting"] and stats["voice"]["options"]["pitch"] == 4.0  # the page's pitch field
    assert stats["voice_text"].startswith("converted (world")
