"""`deltamem train <recipe> --set ...` end to end on the tiny backbone; bad overrides exit with code 2."""

from __future__ import annotations

import json
import os

import pytest

from deltamem.cli import main

from train_helpers import REPO

# the first-stage recipe: later stages start from its output (`init_adapter`), absent in a fresh clone
RECIPE = os.path.join(REPO, "configs", "train", "smollm2-135m-tsw.yaml")


def _tiny_sets(tiny_dir, out) -> list[str]:
    sets = [f"out_dir={out}", f"backbone={tiny_dir}", "steps=1", "batch_size=2", "grad_accum=1", "threads=1",
            "eval_episodes=2", "max_write_tokens=256", "filler_turns=[0, 1]", "curriculum_steps=0", "max_minutes=5"]
    return [a for s in sets for a in ("--set", s)]


def test_train_command_runs_one_step(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", RECIPE, *_tiny_sets(tiny_dir, out)]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["step"] == 1 and "val" in last
    assert (out / "adapter" / "delta_mem_config.json").exists()
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert (out / "checkpoint" / "trainer.pt").exists()
    assert len((out / "log.jsonl").read_text().splitlines()) == 1
    # the recipe's adapter section reached the saved adapter, with the override applied on top
    saved = json.loads((out / "adapter" / "delta_mem_config.json").read_text())["config"]
    assert saved["rank"] == 8 and saved["heads"] == ["q", "o"]
    # --resume on a finished run trains nothing more
    assert main(["train", RECIPE, *_tiny_sets(tiny_dir, out), "--resume"]) == 0
    assert len((out / "log.jsonl").read_text().splitlines()) == 1


def test_train_eval_validation_reports_greedy_by_answer_kind(tiny_dir, tmp_path, capsys):
    """`train-eval --validation` evaluates a trained adapter on the recipe's validation episodes only,
    grouped by answer kind, and writes the same report to `--out`."""
    out = tmp_path / "run5"
    assert main(["train", RECIPE, *_tiny_sets(tiny_dir, out)]) == 0
    capsys.readouterr()
    report_file = tmp_path / "val.json"
    sets = [a for s in (f"backbone={tiny_dir}", "max_write_tokens=256", "threads=1") for a in ("--set", s)]
    assert main(["train-eval", str(out / "adapter"), "--recipe", RECIPE, "--validation", "--episodes", "4",
                 "--out", str(report_file), *sets]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(report_file.read_text())
    assert set(printed) == {"validation"}
    val = printed["validation"]
    assert val["accuracy"]["episodes"] == sum(g["episodes"] for g in val["by_group"].values()) == 4


def test_nested_override_reaches_the_adapter(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run4"
    assert main(["train", RECIPE, *_tiny_sets(tiny_dir, out), "--set", "adapter.rank=4"]) == 0
    saved = json.loads((out / "adapter" / "delta_mem_config.json").read_text())["config"]
    assert saved["rank"] == 4


@pytest.mark.parametrize("bad", ["steps", "bogus_key=1", "steps=ten", "adapter.rank=x"])
def test_bad_override_exits_2(tmp_path, bad, capsys):
    assert main(["train", RECIPE, "--set", f"out_dir={tmp_path}", "--set", bad]) == 2
    err = capsys.readouterr().err
    assert "error" in err and bad.split("=")[0].split(".")[-1] in err
    assert not os.listdir(tmp_path)  # nothing was started


def test_missing_recipe_exits_2(tmp_path):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2


@pytest.mark.parametrize("bad", ["answer_space", "bogus_key=1", "answer_space=maybe"])
def test_train_eval_bad_override_exits_2(tmp_path, bad, capsys):
    """`train-eval --set` takes the same overrides as `train`; a bad one is named before any model loads."""
    assert main(["train-eval", str(tmp_path / "adapter"), "--recipe", RECIPE, "--set", bad]) == 2
    err = capsys.readouterr().err
    assert "error" in err and bad.split("=")[0] in err
