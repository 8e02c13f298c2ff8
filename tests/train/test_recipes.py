"""Training recipes: every YAML under configs/ loads and validates; bad keys and types name the key."""

from __future__ import annotations

import glob
import os

import pytest
import yaml

from deltamem.adapter import DeltaMemConfig
from deltamem.train import TrainConfig
from deltamem.train.config import set_path

from train_helpers import REPO

RECIPES = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
                 + glob.glob(os.path.join(REPO, "configs", "**", "*.yml"), recursive=True))


def test_there_are_recipes():
    assert RECIPES, "no YAML recipes found under configs/"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: os.path.relpath(p, REPO))
def test_recipe_loads_and_validates(path):
    cfg = TrainConfig.from_yaml(path)
    with open(path) as f:
        raw = yaml.safe_load(f)
    for key, value in raw.items():  # every key in the file reaches the config unchanged
        assert getattr(cfg, key) == value, key
    dm = cfg.adapter_config()
    assert isinstance(dm, DeltaMemConfig)
    for key, value in raw.get("adapter", {}).items():
        got = getattr(dm, key)
        assert (list(got) if isinstance(got, tuple) else got) == value, f"adapter.{key}"
    assert cfg.batch_size % cfg.grad_accum == 0
    assert sum(cfg.sources.values()) > 0
    assert TrainConfig(**cfg.to_dict()) == cfg  # the dict saved in checkpoints round-trips


def _write(tmp_path, data) -> str:
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ValueError, match="lerning_rate"):
        TrainConfig.from_yaml(_write(tmp_path, {"steps": 3, "lerning_rate": 1e-3}))


def test_unknown_adapter_key_is_named(tmp_path):
    with pytest.raises(ValueError, match="adapter.*ranq"):
        TrainConfig.from_yaml(_write(tmp_path, {"adapter": {"ranq": 4}}))


@pytest.mark.parametrize("data, key", [
    ({"steps": "ten"}, "steps"),
    ({"lr": "fast"}, "lr"),
    ({"steps": 2.5}, "steps"),
    ({"steps": True}, "steps"),
    ({"sources": ["synthetic"]}, "sources"),
    ({"max_minutes": "soon"}, "max_minutes"),
    ({"steps": 0}, "steps"),
    ({"sources": {"synthetic": 1.0, "wikipedia": 1.0}}, "sources"),
    ({"sources": {"locomo": 1.0}}, "locomo_conversations"),
    ({"batch_size": 6, "grad_accum": 4}, "batch_size"),
    ({"device": "gpu"}, "device"),
    ({"device": "cuda:x"}, "device"),
    ({"answer_space": "sometimes"}, "answer_space"),
    ({"answer_space": 1}, "answer_space"),
])
def test_wrong_value_is_named(tmp_path, data, key):
    with pytest.raises(ValueError, match=key):
        TrainConfig.from_yaml(_write(tmp_path, data))


def test_wrong_adapter_type_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"adapter.*rank"):
        TrainConfig.from_yaml(_write(tmp_path, {"adapter": {"rank": "x"}}))
    with pytest.raises(ValueError, match=r"adapter.*write_granularity"):
        TrainConfig(adapter={"write_granularity": "paragraph"})


def test_int_is_accepted_where_float_is_expected(tmp_path):
    cfg = TrainConfig.from_yaml(_write(tmp_path, {"lr": 1, "max_minutes": 5}))
    assert cfg.lr == 1 and cfg.max_minutes == 5


def test_overrides(tmp_path):
    path = _write(tmp_path, {"steps": 10, "adapter": {"rank": 8, "heads": ["q", "o"]}})
    cfg = TrainConfig.from_yaml(path, {"steps": "3", "adapter.rank": "4", "lr": "1.0e-3", "filler_turns": "[1, 2]",
                                       "max_minutes": "null", "adapter.update_mode": "no_decay"})
    assert cfg.steps == 3 and cfg.lr == 1e-3 and cfg.filler_turns == [1, 2] and cfg.max_minutes is None
    assert cfg.adapter == {"rank": 4, "heads": ["q", "o"], "update_mode": "no_decay"}  # siblings kept
    assert cfg.adapter_config().rank == 4
    with pytest.raises(ValueError, match="steps"):
        TrainConfig.from_yaml(path, {"steps": "ten"})
    with pytest.raises(ValueError, match="bogus"):
        TrainConfig.from_yaml(path, {"bogus": "1"})
    with pytest.raises(ValueError, match="rank"):
        TrainConfig.from_yaml(path, {"adapter.rank": "x"})


def test_set_path_creates_nested_keys():
    d = {}
    set_path(d, "adapter.rank", "4")
    set_path(d, "adapter.heads", "[q, v]")
    set_path(d, "out_dir", "runs/x")
    set_path(d, "seed", 7)  # non-strings pass through
    assert d == {"adapter": {"rank": 4, "heads": ["q", "v"]}, "out_dir": "runs/x", "seed": 7}


def test_device_resolves_to_the_cpu_without_cuda(monkeypatch):
    from deltamem.train.trainer import resolve_device

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="device.*no CUDA"):
        resolve_device("cuda")
