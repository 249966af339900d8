"""Settings and flags say what is wrong and where (issue 8, item 5).

Every setting field is covered by class: the bad values are derived from the field's rule in
``config.RULES``, so a new field is tested as soon as it exists (and must have a rule).

- settings file: a wrong or out-of-range value is dropped with a notice naming the file and the
  key, the other keys are kept, the app goes on;
- environment: an error naming the variable (one line, exit 2 from the CLI);
- command line: an error naming the flag;
- unknown ``MIRAGE_*`` variables: one notice naming the closest known one; known non-setting
  variables are silent; ``MIRAGE_ENABLE_SCRFD`` is a setting; ``MIRAGE_ENABLE_LIVEPORTRAIT``
  is ignored with a notice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from pathlib import Path

import pytest

from mirage_desktop import config
from mirage_desktop.cli import build_parser, main
from mirage_desktop.errors import MirageError

ROOT = Path(__file__).resolve().parents[2]
FIELDS = [f.name for f in dataclasses.fields(config.Settings)]
ENV_FIELDS = [n for n in FIELDS if n != "extra"]
DEFAULTS = config.Settings()


# ---------------------------------------------------------------------------- bad values by class

def wrong_type_values(name: str) -> list:
    """JSON values of the wrong type for the field (what a hand-edited file may hold)."""
    r = config.RULES[name]
    out: list = [[1, 2], None]
    if r.kind != "dict":
        out.append({"a": 1})
    if r.kind in ("int", "float"):
        out += ["abc", True]
    if r.kind == "int":
        out.append(2.5)
    if r.kind == "bool":
        out += ["maybe", 2]
    if r.kind in ("text", "choice", "device", "providers"):
        out.append(7)
    if r.kind in ("choice", "device", "providers", "camera"):
        out.append("no-such-thing")
    if r.kind == "dict":
        out.append("abc")
    return out


def wrong_text(name: str) -> str | None:
    """A string (environment, flag) that is not a value of the field; None if any text is."""
    kind = config.RULES[name].kind
    return {"bool": "maybe", "int": "abc", "float": "abc", "choice": "no-such-thing",
            "device": "no-such-thing", "providers": "no-such-thing", "camera": "no-such-thing"}.get(kind)


def out_of_range_values(name: str) -> list:
    r = config.RULES[name]
    if not r.ranged:
        return []
    if r.choices:
        return [7, max(r.choices) + 1]
    step = 1 if r.kind == "int" else 0.5
    out = []
    if r.lo is not None:
        below = r.lo - step
        out.append(-1 if (r.zero_ok and below == 0) else below)
    if r.hi is not None:
        out.append(r.hi + step)
    if r.kind == "float":
        out.append(float("nan"))
    return [int(v) if r.kind == "int" else v for v in out]


def keeper(name: str) -> tuple[str, object]:
    """Another key, with a valid non-default value, that must survive the bad one."""
    return ("det_size", 320) if name != "det_size" else ("max_faces", 2)


def cases(values_of, fields=FIELDS):
    return [pytest.param(n, v, id=f"{n}={v!r}") for n in fields for v in values_of(n)]


@pytest.fixture
def clean_env(monkeypatch):
    """Only the test's user dirs (from conftest) among the MIRAGE_* variables."""
    for key in list(os.environ):
        if key.startswith("MIRAGE_") and key not in config.OTHER_VARIABLES:
            monkeypatch.delenv(key, raising=False)
    return monkeypatch


# ---------------------------------------------------------------------------- every field has a rule

def test_every_setting_field_has_an_explicit_rule():
    assert set(config.RULES) == set(FIELDS), "add the new field to config.RULES (its type and range)"
    for name in FIELDS:
        assert config.check(name, getattr(DEFAULTS, name)) == getattr(DEFAULTS, name), name
    assert config.validate(config.Settings()) == config.Settings()


# ---------------------------------------------------------------------------- settings file

@pytest.mark.parametrize("name,bad", cases(wrong_type_values) + cases(out_of_range_values))
def test_a_bad_value_in_the_settings_file_is_dropped_with_a_notice_naming_file_and_key(tmp_path, name, bad):
    path = tmp_path / "settings.json"
    other, good = keeper(name)
    path.write_text(json.dumps({name: bad, other: good}))
    res = config.load(path=path, environ={})
    assert getattr(res.settings, name) == getattr(DEFAULTS, name)
    assert getattr(res.settings, other) == good  # the valid key is kept
    assert len(res.notices) == 1, res.notices
    notice = res.notices[0]
    assert str(path) in notice and f"{name} = " in notice and "ignored" in notice
    assert "\n" not in notice
    assert path.exists() and not list(tmp_path.glob("*.corrupt-*"))  # the file is not set aside


def test_unknown_and_retired_keys_in_the_file_are_notices(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"max_face": 3, "enable_liveportrait": True, "max_faces": 2}))
    res = config.load(path=path, environ={})
    assert res.settings.max_faces == 2
    assert len(res.notices) == 2
    assert any("unknown key 'max_face'" in n and "did you mean max_faces?" in n for n in res.notices)
    assert any("enable_liveportrait" in n and "LivePortrait was retired" in n for n in res.notices)


def test_an_unparsable_file_is_still_set_aside(tmp_path):
    path = tmp_path / "settings.json"
    for text in ("{ not json", "[1, 2]", b"\xff\xfe{}"):
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        res = config.load(path=path, environ={})
        assert res.settings == config.Settings() and "unreadable" in res.notices[0]
        assert not path.exists()
    assert len(list(tmp_path.glob("settings.json.corrupt-*"))) >= 1


def test_a_settings_path_that_is_a_folder_is_a_notice_not_a_crash(tmp_path):
    path = tmp_path / "settings.json"
    path.mkdir()
    res = config.load(path=path, environ={})
    assert res.settings == config.Settings()
    assert str(path) in res.notices[0] and "cannot be read" in res.notices[0]
    assert path.is_dir()


def test_a_bad_settings_file_does_not_stop_the_cli(clean_env, tmp_path, capsys):
    path = config.settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"max_faces": 99, "camera": "-1", "det_size": 320}))
    rc = main(["swap", "--target", str(tmp_path / "t.png"), "-o", str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    notices = [ln for ln in err.splitlines() if ln.startswith("mirage: notice:")]
    assert len(notices) == 2
    assert all(str(path) in n for n in notices)
    assert any("max_faces = 99 is out of range" in n for n in notices)
    assert any('camera = "-1" is not a camera' in n and "mirage devices" in n for n in notices)
    assert rc == 2 and "mirage: error: no source face" in err  # it went on to the command's own work


# ---------------------------------------------------------------------------- environment

def _env_cases():
    out = []
    for n in ENV_FIELDS:
        if wrong_text(n) is not None:
            out.append(pytest.param(n, wrong_text(n), "is not", id=f"{n}-wrong"))
        for v in out_of_range_values(n):
            out.append(pytest.param(n, str(v), "out of range", id=f"{n}={v}"))
    return out


@pytest.mark.parametrize("name,raw,problem", _env_cases())
def test_a_bad_environment_value_is_an_error_naming_the_variable(name, raw, problem):
    var = config.env_var(name)
    with pytest.raises(MirageError) as info:
        config.load(path=None, environ={var: raw})
    msg = str(info.value)
    assert msg.startswith(f"{var}={raw} ") and problem in msg, msg
    assert f"unset {var}" in msg and "\n" not in msg
    assert "setting " not in msg


@pytest.mark.parametrize("name", [n for n in ENV_FIELDS if wrong_text(n) is not None])
def test_a_bad_environment_value_stops_the_cli_with_one_line(clean_env, tmp_path, capsys, name):
    var = config.env_var(name)
    clean_env.setenv(var, wrong_text(name))
    rc = main(["swap", "--target", str(tmp_path / "t.png"), "-o", str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mirage: error: {var}={wrong_text(name)} is not"), err


def test_mirage_max_faces_abc_says_so():
    with pytest.raises(MirageError) as info:
        config.load(path=None, environ={"MIRAGE_MAX_FACES": "abc"})
    assert str(info.value).startswith("MIRAGE_MAX_FACES=abc is not a whole number")


def test_several_bad_variables_are_one_line_naming_each():
    with pytest.raises(MirageError) as info:
        config.load(path=None, environ={"MIRAGE_MAX_FACES": "abc", "MIRAGE_DET_SIZE": "7"})
    msg = str(info.value)
    assert "MIRAGE_MAX_FACES=abc" in msg and "MIRAGE_DET_SIZE=7" in msg and "\n" not in msg


def test_an_empty_variable_counts_as_unset(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"max_faces": 2}))
    s = config.load(path=path, environ={"MIRAGE_MAX_FACES": "", "MIRAGE_ENABLE_SWAP": " "}).settings
    assert s.max_faces == 2 and s.enable_swap is True


def test_save_ignores_a_bad_variable(tmp_path):
    path = tmp_path / "settings.json"
    config.save(config.Settings(max_faces=2), path, environ={"MIRAGE_MAX_FACES": "abc"})
    assert json.loads(path.read_text())["max_faces"] == 2


# ---------------------------------------------------------------------------- command-line flags

def _subparser(cmd: str):
    parser = build_parser(cmd)
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices[cmd]


def _setting_flags():
    """(command, flag, setting) for every flag of `mirage run` / `swap` that takes a setting's value."""
    out = []
    for cmd in ("run", "swap"):
        for action in _subparser(cmd)._actions:
            name = action.dest
            if name in FIELDS and action.option_strings and action.nargs != 0:
                flag = next(o for o in action.option_strings if o.startswith("--"))
                out.append((cmd, flag, name, action.choices))
    return out


SETTING_FLAGS = _setting_flags()


def _argv(cmd: str, flag: str, value: str, tmp_path: Path) -> list[str]:
    if cmd == "swap":
        return ["swap", "--target", str(tmp_path / "t.png"), "-o", str(tmp_path / "o.png"), f"{flag}={value}"]
    base = ["run", "--output", "null", "--frames", "1"]
    if flag != "--camera":
        base += ["--input", str(tmp_path / "t.png")]
    return [*base, f"{flag}={value}"]


def test_the_flags_under_test_include_every_kind():
    flags = {f for _, f, _, _ in SETTING_FLAGS}
    assert {"--max-faces", "--det-size", "--fidelity", "--camera", "--width", "--pitch", "--providers"} <= flags


def _flag_cases():
    out = []
    for cmd, flag, name, choices in SETTING_FLAGS:
        if wrong_text(name) is not None:
            out.append(pytest.param(cmd, flag, wrong_text(name), id=f"{cmd} {flag} wrong"))
        for v in out_of_range_values(name):
            out.append(pytest.param(cmd, flag, str(v), id=f"{cmd} {flag}={v}"))
    return out


@pytest.mark.parametrize("cmd,flag,value", _flag_cases())
def test_a_bad_flag_value_is_an_error_naming_the_flag(clean_env, tmp_path, capsys, cmd, flag, value):
    try:
        rc = main(_argv(cmd, flag, value, tmp_path))
    except SystemExit as exc:  # argparse's own type/choices check, which names the flag too
        rc = exc.code
        err = capsys.readouterr().err
        assert f"argument {flag}" in err, err
    else:
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"mirage: error: {flag} "), err
    assert rc == 2


def test_flag_values_are_checked_by_load_with_flag_names():
    with pytest.raises(MirageError, match=r"^--max-faces 99 is out of range"):
        config.load({"max_faces": 99}, path=None, environ={}, flag_names={"max_faces": "--max-faces"})
    with pytest.raises(MirageError, match="setting max_faces"):  # no flag name: the setting
        config.load({"max_faces": 99}, path=None, environ={})
    s = config.load({"max_faces": 3}, path=None, environ={"MIRAGE_MAX_FACES": "2"}).settings
    assert s.max_faces == 3


# ---------------------------------------------------------------------------- camera

@pytest.mark.parametrize("value", ["0", "2", 3, "/dev/video2", "existing"])
def test_camera_takes_an_index_or_a_device_path(tmp_path, value):
    if value == "existing":
        value = str(tmp_path / "cam.mp4")
        Path(value).write_bytes(b"")
    s = config.load({"camera": value}, path=None, environ={}).settings
    assert s.camera == str(value)
    s = config.load(path=None, environ={"MIRAGE_CAMERA": str(value)}).settings
    assert s.camera == str(value)
    assert config.Settings().camera == "0"


@pytest.mark.parametrize("value", ["-1", "abc", "/no/such/device", ""])
def test_camera_refuses_what_cannot_be_a_camera_and_names_the_fix(value):
    with pytest.raises(MirageError) as info:
        config.load({"camera": value}, path=None, environ={}, flag_names={"camera": "--camera"})
    msg = str(info.value)
    assert msg.startswith("--camera ") and "mirage devices" in msg


@pytest.mark.parametrize("value", ["-1", "abc"])
def test_mirage_run_with_a_bad_camera_is_one_line_naming_the_flag_and_the_fix(clean_env, capsys, value):
    rc = main(["run", f"--camera={value}", "--output", "null", "--frames", "1"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1
    assert lines[0].startswith(f"mirage: error: --camera {value} is not a camera") and "mirage devices" in lines[0]


# ---------------------------------------------------------------------------- MIRAGE_* variables

@pytest.mark.parametrize("var", [config.env_var(n) for n in ENV_FIELDS])
def test_a_mistyped_variable_gets_one_notice_naming_the_closest(var):
    typo = var[:-1]
    res = config.load(path=None, environ={typo: "1"})
    assert len(res.notices) == 1
    assert res.notices[0].startswith(f"{typo} is not a Mirage variable") and f"did you mean {var}?" in res.notices[0]


def test_a_mistyped_model_variable_names_the_model_variable():
    res = config.load(path=None, environ={"MIRAGE_INSWAPER_URL": "https://example.org/x.onnx"})
    assert len(res.notices) == 1 and "did you mean MIRAGE_INSWAPPER_URL?" in res.notices[0]


def _model_variables() -> list[str]:
    from mirage_desktop.models.registry import env_prefix, load_registry

    reg = load_registry(environ={})
    out = []
    for spec in reg.specs():
        out += [env_prefix(spec.name) + s for s in ("_URL", "_SHA256", "_SIZE")]
        out += list(spec.url_env_aliases)
        if spec.archive is not None:
            out += [env_prefix(spec.archive.name) + s for s in ("_URL", "_SHA256", "_SIZE")]
    return sorted(set(out))


def _variables_read_in_the_repo() -> set[str]:
    """Every MIRAGE_* name the code and scripts read ("MIRAGE_X" in Python, $MIRAGE_X in shell)."""
    names = set()
    files = [*(ROOT / "mirage_desktop").rglob("*.py"), *(ROOT / "scripts").rglob("*.sh"), *ROOT.glob("*.sh"),
             *(ROOT / "installer").rglob("*.sh")]
    for f in files:
        if f.name == "config.py" and f.parent.name == "mirage_desktop":
            continue  # the list itself
        text = f.read_text(encoding="utf-8", errors="replace")
        names.update(re.findall(r"[\"'](MIRAGE_[A-Z0-9_]*[A-Z0-9])[\"']", text))
        if f.suffix == ".sh":
            names.update(re.findall(r"\$\{?(MIRAGE_[A-Z0-9_]*[A-Z0-9])", text))
    return names


def test_known_variables_that_are_not_settings_are_silent():
    read = _variables_read_in_the_repo()
    assert {"MIRAGE_MODELS_DIR", "MIRAGE_GPU", "MIRAGE_VENV"} <= read  # the scan finds them
    env = {v: "1" for v in [*config.OTHER_VARIABLES, *_model_variables(), *read]}
    env.update({config.env_var(n): str(getattr(DEFAULTS, n)) for n in ENV_FIELDS})
    res = config.load(path=None, environ=env)
    assert res.notices == []


def test_model_variables_are_silent_when_the_model_list_cannot_be_read(tmp_path):
    env = {"MIRAGE_MODELS_TOML": str(tmp_path / "missing.toml"), "MIRAGE_WHATEVER_URL": "x"}
    assert config.load(path=None, environ=env).notices == []


def test_enable_scrfd_is_a_setting():
    assert config.Settings().enable_scrfd is True
    res = config.load(path=None, environ={"MIRAGE_ENABLE_SCRFD": "0"})
    assert res.settings.enable_scrfd is False and res.notices == []
    with pytest.raises(MirageError, match=r"^MIRAGE_ENABLE_SCRFD=maybe is not on or off"):
        config.load(path=None, environ={"MIRAGE_ENABLE_SCRFD": "maybe"})


def test_the_retired_liveportrait_flag_is_one_notice(clean_env, tmp_path, capsys, caplog):
    res = config.load(path=None, environ={"MIRAGE_ENABLE_LIVEPORTRAIT": "1"})
    assert res.settings == config.Settings()
    assert res.notices == ["MIRAGE_ENABLE_LIVEPORTRAIT: LivePortrait was retired (Mirage swaps faces with "
                           "inswapper and does not animate portraits); the flag is ignored"]
    clean_env.setenv("MIRAGE_ENABLE_LIVEPORTRAIT", "1")
    clean_env.setenv("MIRAGE_MAX_FACE", "2")
    with caplog.at_level(logging.INFO, logger="mirage_desktop.config"):
        rc = main(["swap", "--target", str(tmp_path / "t.png"), "-o", str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    notices = [ln for ln in err.splitlines() if ln.startswith("mirage: notice:")]
    assert notices == [
        "mirage: notice: MIRAGE_ENABLE_LIVEPORTRAIT: LivePortrait was retired (Mirage swaps faces with inswapper "
        "and does not animate portraits); the flag is ignored",
        "mirage: notice: MIRAGE_MAX_FACE is not a Mirage variable and is ignored — did you mean MIRAGE_MAX_FACES?",
    ]
    assert "LivePortrait was retired" in caplog.text and "did you mean MIRAGE_MAX_FACES?" in caplog.text  # logged
    assert rc == 2 and "no source face" in err


# ---------------------------------------------------------------------------- existing callers

def test_coerce_and_validate_keep_working_for_the_engine_and_gui():
    assert config.coerce("max_faces", "3") == 3
    assert config.coerce("enable_swap", "off") is False
    assert config.coerce("camera", 2) == "2"
    with pytest.raises(MirageError, match="max_faces"):
        config.coerce("max_faces", "abc")
    with pytest.raises(MirageError, match="unknown setting"):
        config.coerce("no_such_setting", 1)
    s = config.Settings()
    assert config.validate(s) is s
    assert config.validate(config.Settings(camera=2)).camera == "2"  # normalised, not refused
    with pytest.raises(MirageError, match="det_size"):
        config.validate(config.Settings(det_size=123))


def test_the_engine_refuses_a_bad_live_option_naming_it():
    from mirage_desktop.engine import Engine

    eng = Engine(config.Settings())
    with pytest.raises(MirageError, match="max_faces"):
        eng.set_option("max_faces", 99)
    assert eng.settings.max_faces == 1


def test_voice_settings_kept_in_extra_by_older_versions_become_typed_settings(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"extra": {"voice_converter": "rvc", "voice_block_ms": 250, "voice_speaker": "3",
                                          "voice_preset": "warp", "gui": {"view": "side"}}}))
    res = config.load(path=path, environ={})
    s = res.settings
    assert (s.voice_converter, s.voice_block_ms, s.voice_speaker) == ("rvc", 250.0, 3)
    assert s.voice_preset == ""  # a bad old value: dropped with a notice naming the key, like any other
    assert any("voice_preset" in n and str(path) in n for n in res.notices)
    assert s.extra == {"gui": {"view": "side"}}


def test_every_flag_in_the_table_is_a_real_option_of_mirage_run():
    """The flags are declared once (config.FLAGS) and argparse is built from them."""
    flags = {f for a in _subparser("run")._actions for f in a.option_strings}
    dests = {a.dest for a in _subparser("run")._actions}
    for name, f in config.FLAGS.items():
        assert name in FIELDS and name in config.RULES
        assert f.flag in flags and name in dests, name
    # a value flag gives its value to the setting's own check: the same words as the file and env layers
    with pytest.raises(MirageError, match=r"^--fps 500 is out of range"):
        config.load({"capture_fps": "500"}, path=None, environ={}, flag_names={"capture_fps": "--fps"})
