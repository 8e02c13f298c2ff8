"""Recipes with a lineage: base + overlay merging, chains whose every `init` resolves, and every
shipped chain run end to end at tiny scale (tiny random model, 2 steps a stage)."""

from __future__ import annotations

import glob
import json
import os

import pytest
import yaml

from deltamem.train import RecipeError, load_chain, load_recipe, train_chain
from deltamem.train.recipes import is_done
from train_helpers import REPO, tiny_overrides

CHAINS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "train", "*.yaml")))


def _write(path, data) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return str(path)


def test_there_are_shipped_chains():
    assert CHAINS, "configs/train/ holds no recipe chain"


@pytest.mark.parametrize("path", CHAINS, ids=os.path.basename)
def test_shipped_chain_loads_and_every_init_resolves(path, monkeypatch):
    monkeypatch.chdir(REPO)  # repository paths in `init` are relative to the repository root
    out_dir, stages = load_chain(path)
    names = [s.name for s in stages]
    for i, s in enumerate(stages):
        assert s.init is None or s.init in names[:i] or os.path.exists(os.path.join(s.init, "delta_mem_config.json"))
        assert s.config.run.out_dir == os.path.join(out_dir, s.name)
    # every chain starts from the bare backbone or from an adapter the repository holds
    assert stages[0].init is None or not stages[0].init.startswith("runs")


@pytest.mark.parametrize("path", CHAINS, ids=os.path.basename)
def test_shipped_chain_runs_end_to_end_at_tiny_scale(path, tiny_dir, locomo_file, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    overrides = tiny_overrides(tiny_dir, locomo_file)
    out_dir, stages = load_chain(path, overrides)
    chain = tmp_path / "chain.yaml"  # the same chain, its out_dir moved under tmp_path
    data = yaml.safe_load(open(path))
    data["out_dir"] = str(tmp_path / "out")
    names = [st["name"] for st in data["stages"]]
    for st in data["stages"]:
        st["recipe"] = os.path.join(os.path.dirname(path), st["recipe"])
        if st.get("init") not in (None, *names):  # a repository adapter fits the real backbone, not the tiny one
            del st["init"]
    _write(chain, data)
    adapter = train_chain(str(chain), overrides, progress=False)
    assert adapter == str(tmp_path / "out" / stages[-1].name / "adapter")
    for s in load_chain(str(chain), overrides)[1]:
        assert is_done(s)
        log = [json.loads(x) for x in open(os.path.join(s.config.run.out_dir, "log.jsonl"))]
        assert [r["step"] for r in log] == [1, 2]
    assert os.path.exists(os.path.join(adapter, "delta_mem_config.json"))
    # a second run skips the finished stages (nothing new in the logs)
    train_chain(str(chain), overrides, progress=False)
    s0 = load_chain(str(chain), overrides)[1][0]
    assert len(open(os.path.join(s0.config.run.out_dir, "log.jsonl")).readlines()) == 2


def test_overlay_merges_over_its_base_section_by_section(tmp_path):
    _write(tmp_path / "base.yaml", {"data": {"queries": 3, "facts": [1, 2]}, "optim": {"steps": 10, "lr": 0.1}})
    _write(tmp_path / "stage.yaml", {"base": "base.yaml", "optim": {"steps": 20}})
    r = load_recipe(tmp_path / "stage.yaml")
    assert r == {"data": {"queries": 3, "facts": [1, 2]}, "optim": {"steps": 20, "lr": 0.1}}


def test_base_cycle_is_refused(tmp_path):
    _write(tmp_path / "a.yaml", {"base": "b.yaml"})
    _write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")


def _chain(tmp_path, stages, **top):
    _write(tmp_path / "s.yaml", {"optim": {"steps": 1}})
    return _write(tmp_path / "chain.yaml", {"out_dir": str(tmp_path / "out"), "stages": stages, **top})


@pytest.mark.parametrize("init, match", [
    ("runs/old-stage/adapter", "outside the repository"),
    ("/abs/adapter", "outside the repository"),
    ("../elsewhere", "outside the repository"),
    ("later", "neither an earlier stage"),
    ("no/such/folder", "neither an earlier stage"),
])
def test_init_must_resolve_inside_the_chain_or_repository(tmp_path, init, match):
    path = _chain(tmp_path, [{"name": "first", "recipe": "s.yaml", "init": init},
                             {"name": "later", "recipe": "s.yaml", "init": "first"}])
    with pytest.raises(RecipeError, match=match):
        load_chain(path)


def test_chain_stage_outputs_feed_the_next_stage(tmp_path):
    path = _chain(tmp_path, [{"name": "a", "recipe": "s.yaml"}, {"name": "b", "recipe": "s.yaml", "init": "a"}])
    from deltamem.train.recipes import stage_init

    out, stages = load_chain(path)
    assert out == str(tmp_path / "out")
    assert stage_init(stages[0], stages) is None
    assert stage_init(stages[1], stages) == os.path.join(str(tmp_path / "out"), "a", "adapter")


def test_chain_refuses_unknown_keys_and_duplicate_names(tmp_path):
    with pytest.raises(RecipeError, match="unknown chain key"):
        load_chain(_chain(tmp_path, [{"name": "a", "recipe": "s.yaml"}], steps=3))
    with pytest.raises(RecipeError, match="distinct"):
        load_chain(_chain(tmp_path, [{"name": "a", "recipe": "s.yaml"}, {"name": "a", "recipe": "s.yaml"}]))


def test_overrides_reach_every_stage_and_are_checked(tmp_path):
    path = _chain(tmp_path, [{"name": "a", "recipe": "s.yaml"}, {"name": "b", "recipe": "s.yaml", "init": "a"}])
    _, stages = load_chain(path, {"optim.lr": "0.5"})
    assert [s.config.optim.lr for s in stages] == [0.5, 0.5]
    with pytest.raises(RecipeError, match="optim.lrr"):
        load_chain(path, {"optim.lrr": "0.5"})
