"""Recipe sections are validated key by key; errors name the bad key; unknown keys are refused."""

from __future__ import annotations

import pytest

from deltamem.train import RecipeError, TrainConfig
from deltamem.train.config import SECTIONS


def test_defaults_build_and_round_trip():
    cfg = TrainConfig.from_dict({})
    again = TrainConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert set(SECTIONS) == {"data", "objectives", "preserve", "optim", "run"}


@pytest.mark.parametrize("data, match", [
    ({"steps": 3}, "unknown key.*steps"),
    ({"data": {"fact": [1, 2]}}, "unknown key data.fact"),
    ({"optim": {"lr": "fast"}}, "optim.lr must be float"),
    ({"optim": {"steps": 0}}, "optim.steps must be >= 1"),
    ({"optim": {"batch_size": 6, "grad_accum": 4}}, "optim.batch_size"),
    ({"optim": {"lr_scale": {"gate": 2.0}}}, "optim.lr_scale"),
    ({"optim": {"lr_scale": {"gates": 0}}}, "optim.lr_scale"),
    ({"data": {"facts": [3, 1]}}, "data.facts must be a range"),
    ({"data": {"facts": 2}}, "data.facts must be list"),
    ({"data": {"window": 1.5}}, r"data.window must be in \[0, 1\]"),
    ({"data": {"max_history_tokens": 100}}, "data.max_history_tokens must be >= 768"),
    ({"data": {"sources": {"synthetic": 1.0}}}, "data.sources"),
    ({"data": {"sources": {"chats": 0.0}}}, "data.sources"),
    ({"data": {"sources": {"locomo": 1.0}}}, "data.locomo_path"),
    ({"objectives": {"distill": -1}}, "objectives.distill must be >= 0"),
    ({"objectives": {"gate_target": 2}}, "objectives.gate_target"),
    ({"preserve": {"weight": 1.0}}, "preserve.weight"),
    ({"run": {"device": "tpu"}}, "run.device"),
    ({"run": {"eval_every": True}}, "run.eval_every must be int"),
    ({"adapter": {"rank": "eight"}}, "adapter"),
    ({"adapter": {"no_such_field": 1}}, "adapter"),
    ({"optim": 3}, "optim must be a mapping"),
    ({"init": 5}, "init must be a path"),
])
def test_bad_recipe_names_the_key(data, match):
    with pytest.raises(RecipeError, match=match):
        TrainConfig.from_dict(data)


def test_int_is_accepted_where_a_float_is_expected():
    assert TrainConfig.from_dict({"optim": {"lr": 1}}).optim.lr == 1
