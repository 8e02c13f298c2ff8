"""Episode streams: `batch(step, n)` depends only on (seed, step) in every process; the filler curriculum."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from deltamem.train import TrainConfig
from deltamem.train.data import EpisodeStream, filler_range, stable_seed, validation_set

from train_helpers import REPO

MIX = {"synthetic": 0.5, "updates": 0.3, "key_value": 0.2}


def test_batch_is_a_function_of_seed_and_step():
    cfg = TrainConfig(sources=MIX, filler_turns=[0, 3], seed=3)
    a, b = EpisodeStream(cfg), EpisodeStream(cfg)
    assert a.batch(7, 6) == b.batch(7, 6)
    b.batch(0, 4)  # drawing other batches first changes nothing
    assert a.batch(7, 6) == b.batch(7, 6)
    assert a.batch(7, 6)[:3] == a.batch(7, 3)  # a prefix of a bigger batch: ranks can split it
    assert a.batch(7, 6) != a.batch(8, 6)
    other = EpisodeStream(TrainConfig(sources=MIX, filler_turns=[0, 3], seed=4))
    assert a.batch(7, 6) != other.batch(7, 6)


def test_mixture_follows_weights():
    cfg = TrainConfig(sources={"synthetic": 0.0, "updates": 1.0, "key_value": 1.0})
    kinds = [ep.kind for ep in EpisodeStream(cfg).batch(0, 200)]
    assert set(kinds) == {"update", "key_value"}  # zero weight: never drawn
    assert 60 < kinds.count("update") < 140


def test_validation_set_is_fixed_and_apart_from_training():
    cfg = TrainConfig(sources=MIX, seed=0)
    val = validation_set(cfg, 8)
    assert val == validation_set(cfg, 8)
    train_q = {ep.question + ep.answer for step in range(20) for ep in EpisodeStream(cfg).batch(step, 8)}
    assert len({ep.question + ep.answer for ep in val} - train_q) >= 6
    held = validation_set(TrainConfig(sources={"synthetic": 1.0}), 8, split="heldout")
    assert held != validation_set(TrainConfig(sources={"synthetic": 1.0}), 8)


def test_stable_seed_ignores_hash_salt():
    assert stable_seed(0, 5, 1) == stable_seed(0, 5, 1)
    assert stable_seed(0, 5, 1) != stable_seed(0, 5, 2)


@pytest.mark.slow
def test_batch_is_identical_in_another_process():
    """`hash()` is salted per process; the stream must not depend on it."""
    code = ("import json; from deltamem.train.data import EpisodeStream; from deltamem.train import TrainConfig; "
            f"s = EpisodeStream(TrainConfig(sources={MIX!r}, filler_turns=[0, 3], seed=3)); "
            "print(json.dumps([[e.question, e.answer, len(e.history)] for e in s.batch(7, 6)]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    mine = [[e.question, e.answer, len(e.history)]
            for e in EpisodeStream(TrainConfig(sources=MIX, filler_turns=[0, 3], seed=3)).batch(7, 6)]
    assert theirs == mine


def test_curriculum_grows_filler():
    cfg = TrainConfig(curriculum_start=[0, 0], filler_turns=[2, 6], curriculum_steps=10)
    assert filler_range(cfg, 0) == (0, 0)
    assert filler_range(cfg, 5) == (1, 3)
    assert filler_range(cfg, 10) == (2, 6)
    assert filler_range(cfg, 500) == (2, 6)
    ranges = [filler_range(cfg, s) for s in range(12)]
    assert all(lo <= hi for lo, hi in ranges)
    assert ranges == sorted(ranges)  # never shrinks
    assert filler_range(TrainConfig(filler_turns=[1, 4]), 0) == (1, 4)  # no curriculum: final range at once


def test_curriculum_reaches_the_episodes():
    cfg = TrainConfig(sources={"synthetic": 1.0}, facts_per_episode=[1, 2], curriculum_start=[0, 0],
                      filler_turns=[3, 3], curriculum_steps=4)
    stream = EpisodeStream(cfg)
    for ep in stream.batch(0, 10):  # no filler yet: two messages per fact
        assert len(ep.history) == 2 * len(ep.meta["facts"])
    for ep in stream.batch(4, 10):
        assert len(ep.history) == 2 * (len(ep.meta["facts"]) + 3)
    # the filler range also applies to the update and key-value sources
    def sched(kind):
        return EpisodeStream(TrainConfig(sources={kind: 1.0}, curriculum_start=[0, 0], filler_turns=[3, 3],
                                         curriculum_steps=4))

    updates = sched("updates")
    assert {len(e.history) for e in updates.batch(0, 10)} == {4}  # fact + update
    assert {len(e.history) for e in updates.batch(4, 10)} == {4 + 2 * 3}

    def noise(ep):
        return sum("special code" not in m["content"] and "remember that code" not in m["content"]
                   for m in ep.history)

    kv = sched("key_value")
    assert {noise(e) for e in kv.batch(0, 10)} == {0}
    assert {noise(e) for e in kv.batch(4, 10)} == {2 * 3}
