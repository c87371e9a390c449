from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ttsft_daemon.config import Config, config_from_dict, iter_fields, load_config
from ttsft_daemon.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "ttsft_daemon"]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def test_example_config_documents_every_key_with_its_default() -> None:
    text = (REPO / "config.example.yaml").read_text()
    example = _flatten(yaml.safe_load(text))
    for key, default, doc in iter_fields():
        assert key in example, f"{key} missing from config.example.yaml"
        assert doc, f"{key} has no documentation"
        if key != "paths.root":
            shown = example[key]
            want = str(default) if isinstance(default, Path) else default
            assert shown == want, f"{key}: example shows {shown!r}, default is {want!r}"
    assert set(example) == {k for k, _, _ in iter_fields()}


def test_example_loads_and_relative_paths_resolve_against_the_file() -> None:
    cfg = load_config(REPO / "config.example.yaml")
    assert cfg.paths.root == REPO / "state"
    assert cfg.inbox.settle_seconds == 10.0
    assert cfg.training.min_clips == 300


def test_defaults_are_valid() -> None:
    assert config_from_dict({}) == Config()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"inbox": {"setle_seconds": 3}}, "inbox.setle_seconds: unknown key (did you mean 'inbox.settle_seconds'?)"),
        ({"trainig": {}}, "trainig: unknown key (did you mean 'training'?)"),
        ({"inbox": {"settle_seconds": "soon"}}, "inbox.settle_seconds: got 'soon', expected a number"),
        ({"inbox": {"settle_seconds": -1}}, "inbox.settle_seconds: got -1.0, must be at least 0.0"),
        ({"training": {"quality": "ultra"}}, "training.quality: got 'ultra', allowed: x_low, low, medium, high"),
        ({"training": {"enabled": "yes please"}}, "training.enabled: got 'yes please', expected true or false"),
        ({"training": {"min_clips": 2.5}}, "training.min_clips: got 2.5, expected an integer"),
        ({"audio": {"sample_rate": 44100}}, "audio.sample_rate: got 44100, allowed: 16000, 22050"),
        ({"paths": "here"}, "paths: got 'here', expected a mapping of keys"),
        ({"segmentation": {"min_clip_seconds": 10, "max_clip_seconds": 12}}, "at least twice"),
        ({"inbox": {"extensions": ["mp3", "exe"]}}, "inbox.extensions: unsupported ['exe']"),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_allowed(raw: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert any(expected in p for p in err.value.problems), err.value.problems


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({"inbox": {"settle_seconds": -1, "polling": 3}, "bogus": 1})
    assert len(err.value.problems) == 3


def test_check_config_cli(tmp_path: Path) -> None:
    ok = subprocess.run([*CLI, "check-config", str(REPO / "config.example.yaml")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    typo = tmp_path / "typo.yaml"
    typo.write_text("training:\n  min_clip: 20\n")
    bad = subprocess.run([*CLI, "check-config", str(typo)], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "training.min_clip: unknown key (did you mean 'training.min_clips'?)" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("paths:\n  root: [\n", "YAML syntax error at line 3"),
        ("inbox:\n\tsettle_seconds: 3\n", "YAML syntax error at line 2"),
        ("- a\n- b\n", "config: got ['a', 'b'], expected a mapping of keys"),
        ("\x00\x01binary", "YAML syntax error"),
    ],
)
def test_broken_files_give_messages_not_tracebacks(tmp_path: Path, content: str, needle: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(content)
    res = subprocess.run([*CLI, "check-config", str(f)], capture_output=True, text=True)
    assert res.returncode == 2
    assert needle in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_file(tmp_path: Path) -> None:
    res = subprocess.run([*CLI, "check-config", str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert res.returncode == 2 and "file not found" in res.stderr


def test_help_lists_the_contract_commands() -> None:
    res = subprocess.run([*CLI, "--help"], capture_output=True, text=True)
    for cmd in ("run", "status", "check-config", "preprocess", "train"):
        assert cmd in res.stdout
