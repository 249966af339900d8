"""The health banner reports the voice pipeline: errors red, an automatic pass-through yellow."""

from mirage_desktop.control.health import verdict

ERR = "output device 'Mirage Microphone' not found — run `mirage mic setup` to create it"


def _snap(voice=None, problems=()):
    snap = {"status": {"running": True, "problems": list(problems)}, "stages": {}, "counters": {}, "gauges": {}}
    if voice is not None:
        snap["voice"] = voice
    return snap


def test_voice_error_is_red_and_listed_once():
    v = verdict(_snap({"error": ERR, "passthrough_reason": None}, problems=[f"voice: {ERR}"]))
    assert v == {"level": "red", "reasons": [f"voice: {ERR}"]}
    # an error after a successful start (a stream died) is only in the voice status
    v = verdict(_snap({"error": "input device 'Mic' stopped delivering audio", "running": False}))
    assert v["level"] == "red" and v["reasons"] == ["voice: input device 'Mic' stopped delivering audio"]


def test_automatic_voice_passthrough_is_yellow_but_the_users_bypass_is_not():
    reason = "converter world too slow: runtime/real > 0.8 for 40 consecutive chunks at 192 ms"
    v = verdict(_snap({"error": None, "passthrough_reason": reason, "bypass": False}))
    assert v == {"level": "yellow", "reasons": [f"voice pass-through: {reason}"]}
    v = verdict(_snap({"error": None, "passthrough_reason": "bypass (voice disabled)", "bypass": True}))
    assert v["level"] == "green"
    v = verdict(_snap({"error": None, "passthrough_reason": None, "bypass": False}))
    assert v["level"] == "green"
