"""Held-out figures on the tiny model: the plumbing of greedy accuracy and the perplexity ratio."""

from __future__ import annotations

import math

import pytest

from deltamem.train import Trainer
from deltamem.train.data import validation_set
from deltamem.train.evaluate import contains, greedy_accuracy, normalise, perplexity_ratio


@pytest.fixture(scope="module")
def trainer(tiny_dir, tmp_path_factory):
    from deltamem.train import TrainConfig

    from train_helpers import TINY_TRAIN

    cfg = TrainConfig(**{**TINY_TRAIN, "backbone": tiny_dir, "out_dir": str(tmp_path_factory.mktemp("eval"))})
    return Trainer(cfg, progress=False)


def test_contains_normalises():
    assert normalise("  The  Answer: Biscuit!! ") == "the answer biscuit"
    assert contains("I think it's called Biscuit.", "biscuit")
    assert not contains("Rocky", "Biscuit")


def test_greedy_accuracy_plumbing(trainer):
    eps = validation_set(trainer.cfg, 4)
    out = greedy_accuracy(trainer, eps, batch=4, max_new_tokens=4)
    acc = out["accuracy"]
    assert acc["episodes"] == 4
    for k in ("own", "mismatched", "zero", "full_history"):
        assert 0.0 <= acc[k] <= 1.0, k
    assert set(out["first_token"]) == {"own", "mismatched", "zero", "full_history"}
    assert all(0.0 <= v <= 1.0 for v in out["first_token"].values())
    assert len(out["samples"]) == 4
    assert [s["question"] for s in out["samples"]] == [e.question for e in eps]
    for s in out["samples"]:
        assert {"answer", "own", "mismatched", "zero", "full_history"} <= s.keys()


def test_greedy_accuracy_keeps_episodes_aligned_after_drops(trainer):
    eps = validation_set(trainer.cfg, 4)
    long = type(eps[0])(eps[0].history, "Q?", " ".join(["far too long"] * 60))
    out = greedy_accuracy(trainer, [eps[0], long, eps[1], eps[2]], batch=4, max_new_tokens=2)
    assert out["accuracy"]["episodes"] == 3
    assert [s["question"] for s in out["samples"]] == [e.question for e in eps[:3]]


def test_perplexity_ratio_plumbing(trainer):
    texts = ["The quick brown fox jumps over the lazy dog.", "Bees make honey in the summer months."]
    memory = ["Maya: I adopted a puppy named Biscuit.", "Liam: I moved to Oslo last year."]
    out = perplexity_ratio(trainer, texts, memory, max_tokens=64)
    assert out["tokens"] > 10
    for k in ("backbone", "delta_mem", "ratio"):
        assert math.isfinite(out[k]) and out[k] > 0, k
    assert out["ratio"] == pytest.approx(out["delta_mem"] / out["backbone"])
