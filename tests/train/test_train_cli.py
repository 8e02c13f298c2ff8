"""`deltamem train CHAIN --set key=value`: runs the chain, prints where the adapter is; bad keys exit 2 naming them."""

from __future__ import annotations

import json
import os

import yaml

from deltamem.cli import main
from train_helpers import tiny_overrides


def _chain(tmp_path) -> str:
    (tmp_path / "stage.yaml").write_text(yaml.safe_dump({"adapter": {"rank": 4, "alpha": 8.0, "num_state_heads": 1}}))
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump({"out_dir": str(tmp_path / "out"), "stages": [
        {"name": "one", "recipe": "stage.yaml"}, {"name": "two", "recipe": "stage.yaml", "init": "one"}]}))
    return str(path)


def _sets(tiny_dir, locomo_file):
    return [a for k, v in tiny_overrides(tiny_dir, locomo_file).items() for a in ("--set", f"{k}={v}")]


def test_train_runs_a_chain_and_prints_the_adapter(tiny_dir, locomo_file, tmp_path, capsys):
    assert main(["train", _chain(tmp_path), *_sets(tiny_dir, locomo_file)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out == {"adapter": str(tmp_path / "out" / "two" / "adapter"), "complete": True}
    assert os.path.exists(os.path.join(out["adapter"], "delta_mem_config.json"))


def test_bad_override_exits_2_naming_the_key(tiny_dir, locomo_file, tmp_path, capsys):
    code = main(["train", _chain(tmp_path), *_sets(tiny_dir, locomo_file), "--set", "optim.stepz=3"])
    assert code == 2
    assert "optim.stepz" in capsys.readouterr().err
