"""Health verdict for the status banner: green / yellow / red, with the reason in words."""

from __future__ import annotations

from ..status import Problem

TARGET_FPS = 20.0
TARGET_P95_MS = 80.0
DELIBERATE_DROPS = ("dropped.adapt_fps",)  # the ladder's lower frame rate: shown as its own reason


def verdict(snapshot: dict) -> dict:
    status = snapshot.get("status", {})
    stages = snapshot.get("stages", {})
    counters = snapshot.get("counters", {})
    gauges = snapshot.get("gauges", {})
    reasons_red, reasons_yellow, notes = [], [], []
    by_level = {"error": reasons_red, "warning": reasons_yellow, "info": notes}
    for p in status.get("issues", []):  # typed: the level decides the colour, never the wording
        line = Problem(**p).text()
        if p["source"].startswith("passthrough:") and p["level"] == "error":
            line = f"pass-through: {line}"
        by_level[p["level"]].append(line)
    voice = snapshot.get("voice") or {}  # the voice pipeline's own status (errors after start too)
    if voice.get("error"):  # devices missing/busy or a dead stream: the virtual microphone is silent
        line = f"voice: {voice['error']}"
        if line not in reasons_red:  # the same failure as the engine's own voice problem
            reasons_red.append(line)
    elif voice.get("passthrough_reason") and not voice.get("bypass"):  # the user's own bypass is no problem
        reasons_yellow.append(f"voice pass-through: {voice['passthrough_reason']}")
    if status.get("running"):
        fps = gauges.get("fps")
        if isinstance(fps, (int, float)) and counters.get("frames.out", 0) > 30 and fps < TARGET_FPS:
            reasons_yellow.append(f"{fps:.1f} FPS, below the {TARGET_FPS:.0f} FPS target")
        # the video path's own latency: a frame held back to leave with the voice is not slow
        total = stages.get("video.ready") or stages.get("total", {})
        if total.get("count", 0) > 30 and total.get("p95") and total["p95"] > TARGET_P95_MS:
            reasons_yellow.append(f"P95 latency {total['p95']:.0f} ms, above {TARGET_P95_MS:.0f} ms")
        frames_in = counters.get("frames.in", 0)
        dropped = sum(v for k, v in counters.items()
                      if k.startswith("dropped.") and k not in DELIBERATE_DROPS)
        if frames_in > 60 and dropped / frames_in > 0.2:
            reasons_yellow.append(f"{100 * dropped / frames_in:.0f}% of frames dropped")
    if reasons_red:
        return {"level": "red", "reasons": reasons_red + reasons_yellow + notes}
    if reasons_yellow:
        return {"level": "yellow", "reasons": reasons_yellow + notes}
    return {"level": "green", "reasons": ["running well" if status.get("running") else "ready"] + notes}
