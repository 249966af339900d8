"""The degrade ladder on scripted load: down in the brief's order, up in reverse, no oscillation."""

import numpy as np
import pytest

from mirage_desktop.control.ladder import (DOWN_WINDOW, RESTORE_FRAMES, DegradeLadder, build_steps)


def _steps():
    return build_steps(enhancer_on=True, det_size=640, fps=30, short_side=720)


def test_the_ladder_is_built_in_the_briefs_order():
    kinds = [(s.kind, s.value) for s in _steps()]
    assert kinds == [("enhancer", 2), ("enhancer", 4), ("enhancer", 0), ("det_size", 480), ("det_size", 320),
                     ("fps", 24.0), ("fps", 20.0), ("fps", 15.0), ("scale", 512), ("scale", 384), ("scale", 256)]
    # steps that do not apply are left out
    small = build_steps(enhancer_on=False, det_size=320, fps=15, short_side=384)
    assert [(s.kind, s.value) for s in small] == [("scale", 256)]


class SlowStage:
    """A scripted stage whose cost falls with each step taken (the ratio at each level)."""

    def __init__(self, ratios, noise=0.0, seed=0):
        self.ratios, self.noise = ratios, noise
        self.rng = np.random.default_rng(seed)

    def ratio(self, level):
        r = self.ratios[min(level, len(self.ratios) - 1)]
        return max(0.0, r + self.rng.uniform(-self.noise, self.noise))


def _drive(lad, stage, frames, load=1.0):
    events = []
    for _ in range(frames):
        ev = lad.update(stage.ratio(lad.level) * load)
        if ev:
            events.append((ev, lad.level))
    return events


def test_steps_down_in_order_and_restores_in_reverse_after_300_stable_frames():
    steps = _steps()
    lad = DegradeLadder(steps)
    # each step makes the frame 10 % cheaper; under load (x2.2) it needs several steps
    stage = SlowStage([1.0 * 0.9 ** k for k in range(len(steps) + 1)])
    events = _drive(lad, stage, 2000, load=2.2)
    downs = [lvl for ev, lvl in events if ev == "down"]
    assert downs == list(range(1, len(downs) + 1))  # one step at a time, in order
    assert lad.overrides().get("enhancer") == 0 and "det_size" in lad.overrides()
    assert lad.reason() == steps[lad.level - 1].reason
    deepest = lad.level
    assert stage.ratio(deepest) * 2.2 <= 1.0  # it stopped where the frame fits
    # the load goes away: one step back per 300 stable frames, in reverse order
    n_before = len(lad.log)
    frames = 0
    while lad.level and frames < 20 * RESTORE_FRAMES:
        level = lad.level
        ev = lad.update(stage.ratio(level) * 0.3)
        frames += 1
        if ev:
            assert ev == "up" and lad.level == level - 1
    assert lad.level == 0 and lad.overrides() == {}
    ups = [e for e in lad.log[n_before:] if e[0] == "up"]
    assert [lvl for _, lvl, _ in ups] == list(range(deepest - 1, -1, -1))
    assert frames >= deepest * RESTORE_FRAMES  # never sooner than 300 frames per step


def test_no_restore_before_300_stable_frames():
    lad = DegradeLadder(_steps())
    stage = SlowStage([1.5, 0.5])
    _drive(lad, stage, DOWN_WINDOW)
    assert lad.level == 1
    ratios = [0.5] * DOWN_WINDOW + [0.2] * (RESTORE_FRAMES - DOWN_WINDOW)  # then the load drops
    for r in ratios[:-1]:
        assert lad.update(r) is None
    assert lad.update(ratios[-1]) == "up"


def test_never_oscillates_on_a_ratio_hovering_at_the_threshold():
    """Level 0 costs 1.0 ± 0.05 (the threshold), level 1 costs 0.59 ± 0.02 (just under the
    restore threshold): it steps down once and stays, whatever the noise."""
    lad = DegradeLadder(_steps())
    stage = SlowStage([1.02, 0.59], noise=0.05, seed=3)
    events = _drive(lad, stage, 10 * RESTORE_FRAMES)
    assert events[0] == ("down", 1)
    assert len([e for e in events if e[0] == "down"]) <= 2
    assert not [e for e in events if e[0] == "up"]  # 0.59 here would mean 1.02 up there: it stays


def test_a_bouncing_restore_waits_longer_each_time():
    """The load wobbles so that the restore estimate is wrong every time (level 1 looks lighter
    after a while, level 0 stays too heavy): restores that bounce back are spaced further and
    further apart, so the ladder settles instead of flapping."""
    lad = DegradeLadder(_steps())
    ups_at, since_down = [], 0
    for t in range(12000):
        if lad.level == 0:
            r = 1.3
        else:  # 0.5 for the first window after entering level 1, then 0.3
            r = 0.5 if since_down < 40 else 0.3
        ev = lad.update(r)
        since_down = 0 if ev == "down" else since_down + 1
        if ev == "up":
            ups_at.append(t)
    gaps = np.diff(ups_at)
    assert len(gaps) >= 2
    assert all(b > 1.5 * a for a, b in zip(gaps, gaps[1:]))


def test_pinned_settings_do_not_adapt():
    lad = DegradeLadder(_steps(), enabled=False)
    assert _drive(lad, SlowStage([3.0]), 500) == []
    lad.set_enabled(True)
    assert _drive(lad, SlowStage([3.0, 3.0, 3.0, 0.5]), 200)[0] == ("down", 1)
    lad.set_enabled(False)  # pinning returns to exactly what the user chose
    assert lad.level == 0 and lad.overrides() == {}


def test_behind_the_voice_counts_as_over_budget():
    lad = DegradeLadder(_steps())
    for _ in range(DOWN_WINDOW):
        ev = lad.update(0.5, behind=True)
    assert ev == "down"


def test_the_same_ladder_keeps_its_place_a_new_one_starts_from_the_top():
    lad = DegradeLadder(_steps())
    _drive(lad, SlowStage([3.0, 3.0, 0.5]), 3 * DOWN_WINDOW)
    assert lad.level == 2
    lad.rebuild(_steps())  # new models with the same sizes, say: nothing to undo
    assert lad.level == 2 and lad.overrides() == {"enhancer": 4}
    lad.rebuild(build_steps(enhancer_on=False, det_size=640, fps=30, short_side=720))  # the user chose anew
    assert lad.level == 0 and lad.overrides() == {}


def test_an_odd_slow_frame_does_not_stop_the_restore():
    """A busy machine: one frame in 40 takes 2.5x the budget; the load is otherwise light."""
    lad = DegradeLadder(_steps())
    _drive(lad, SlowStage([1.2, 0.2]), DOWN_WINDOW)
    assert lad.level == 1
    events = []
    for i in range(3 * RESTORE_FRAMES):
        ev = lad.update(2.5 if i % 40 == 39 else (0.5 if i < DOWN_WINDOW else 0.2))
        if ev:
            events.append((ev, i))
    assert events and events[0][0] == "up" and events[0][1] < 2 * RESTORE_FRAMES


def test_a_load_that_fell_right_after_a_step_still_lets_it_restore():
    """The heavy models were replaced right after the last step down (the step's own window
    measured the light load): the step is taken to have saved at most half, so it restores."""
    lad = DegradeLadder(_steps())
    _drive(lad, SlowStage([7.0]), DOWN_WINDOW)
    assert lad.level == 1
    ups = [lad.update(0.08) for _ in range(2 * RESTORE_FRAMES)]
    assert "up" in ups and lad.level == 0


@pytest.mark.parametrize("cap", [24.0, 20.0, 15.0])
def test_the_frame_rate_cap_passes_that_many_frames(cap):
    from mirage_desktop.control.ladder import FrameRateCap

    rng = np.random.default_rng(1)
    c = FrameRateCap(cap)
    t = np.arange(900) / 30 + rng.uniform(-0.004, 0.004, 900)  # 30 s of a jittery 30 FPS camera
    passed = sum(c.admit(x) for x in t)
    assert abs(passed / 30 - cap) <= 0.5
    assert FrameRateCap(0).admit(0.0) and sum(FrameRateCap(0).admit(x) for x in t) == 900


# ---- pixel boost: the first steps, one size down at a time ------------------------------------------

@pytest.mark.parametrize("boost, expect", [(512, [384, 256, 128]), (384, [256, 128]), (256, [128]), (128, [])])
def test_pixel_boost_steps_come_first_and_only_below_the_users_size(boost, expect):
    steps = build_steps(enhancer_on=True, det_size=640, fps=30, short_side=720, pixel_boost=boost)
    kinds = [(s.kind, s.value) for s in steps]
    assert kinds[:len(expect)] == [("boost", b) for b in expect]
    assert kinds[len(expect):] == [(s.kind, s.value) for s in _steps()]  # then the ladder as before
    assert all("pixel boost" in s.reason for s in steps[:len(expect)])


def test_a_pixel_boost_step_is_taken_to_save_up_to_its_drop_in_model_calls():
    """256 → 128 px is 4 → 1 swapper calls: the frame can get far cheaper than half. Measured at
    2.0 before and 0.55 after (a 72 % saving), the restore waits for a load that fits up there
    (0.2 x 2.0 / 0.55 = 0.73) instead of taking the step at half and bouncing straight back."""
    lad = DegradeLadder(build_steps(enhancer_on=False, det_size=0, fps=30, short_side=0, pixel_boost=256))
    assert (lad.steps[0].kind, lad.steps[0].value, lad.steps[0].floor) == ("boost", 128, 0.25)
    for _ in range(DOWN_WINDOW):
        lad.update(2.0)
    assert lad.level == 1
    for _ in range(DOWN_WINDOW):
        assert lad.update(0.55) is None  # the first full window at the new level: entered at 0.55
    for _ in range(2 * RESTORE_FRAMES):
        assert lad.update(0.35) is None  # 0.35 x 2.0 / 0.55 = 1.27 up there: it stays
    assert lad.level == 1
    ups = [lad.update(0.2) for _ in range(2 * RESTORE_FRAMES)]
    assert "up" in ups and lad.level == 0


def _pipeline(astronaut, **settings):
    from mirage_desktop.config import Settings
    from mirage_desktop.metrics import Metrics
    from mirage_desktop.outputs.sinks import NullSink
    from mirage_desktop.vision.capture import ImageSource
    from mirage_desktop.vision.pipeline import VideoPipeline

    return VideoPipeline(Settings(**settings), Metrics(), ImageSource(astronaut, fps=30), [NullSink()])


def test_the_pipelines_stages_get_the_stepped_down_pixel_boost(astronaut):
    p = _pipeline(astronaut, pixel_boost=512)
    kinds = [(st.kind, st.value) for st in p.ladder.steps]
    assert kinds[:3] == [("boost", 384), ("boost", 256), ("boost", 128)]
    seen = []
    for level in range(4):
        p.ladder.level = level
        p._apply_adapt()
        seen.append(p._stage_opts.pixel_boost)
    assert seen == [512, 384, 256, 128]
    assert p.opts.pixel_boost == 512  # never written into the user's settings
    p.ladder.level = 0
    p._apply_adapt()
    assert p._stage_opts.pixel_boost == 512


def test_choosing_a_pixel_boost_rebuilds_the_ladder(astronaut):
    p = _pipeline(astronaut)  # 128: no boost steps
    assert not [st for st in p.ladder.steps if st.kind == "boost"]
    p.set_option("pixel_boost", 384)
    assert [(st.kind, st.value) for st in p.ladder.steps][:2] == [("boost", 256), ("boost", 128)]
    with p._adapt_lock:
        p.ladder.level = 2
        p._apply_adapt()
    assert p._stage_opts.pixel_boost == 128
    p.set_option("pixel_boost", 256)  # the user chose anew: the ladder starts from their setting
    assert p.ladder.level == 0 and p._stage_opts.pixel_boost == 256
    assert [(st.kind, st.value) for st in p.ladder.steps][:1] == [("boost", 128)]
    p.set_option("pixel_boost", 128)
    assert not [st for st in p.ladder.steps if st.kind == "boost"] and p._stage_opts.pixel_boost == 128
