"""Held-out figures on the tiny model: the plumbing of greedy accuracy and the perplexity ratio."""

from __future__ import annotations

import math

import pytest
import torch

from deltamem.train import Trainer
from deltamem.train.data import validation_set
from deltamem.train.evaluate import answer_kind, ce_by_answer, contains, gate_profile, made_up_probe, greedy_accuracy, normalise, perplexity_ratio


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


def test_validation_greedy_groups_add_up_to_the_totals(trainer):
    """`validation_greedy` splits the validation episodes by answer kind; the groups' hits and episodes
    must add up to the overall accuracies, so a per-kind figure can never disagree with the total."""
    from deltamem.train.evaluate import validation_greedy

    out = validation_greedy(trainer, n=6)
    groups, acc = out["by_group"], out["accuracy"]
    assert sum(g["episodes"] for g in groups.values()) == acc["episodes"] == 6
    eps = validation_set(trainer.cfg, 6, words=trainer.words, kin_words=trainer.kin_words)
    assert set(groups) == {answer_kind(ep, trainer.words) for ep in eps}
    for name in ("own", "mismatched", "zero", "full_history"):
        assert sum(g[name] for g in groups.values()) / acc["episodes"] == pytest.approx(acc[name]), name
        assert all(0 <= g[name] <= g["episodes"] for g in groups.values()), name


def test_perplexity_ratio_plumbing(trainer):
    texts = ["The quick brown fox jumps over the lazy dog.", "Bees make honey in the summer months."]
    memory = ["Maya: I adopted a puppy named Biscuit.", "Liam: I moved to Oslo last year."]
    out = perplexity_ratio(trainer, texts, memory, max_tokens=64)
    assert out["tokens"] > 10
    for k in ("backbone", "delta_mem", "ratio"):
        assert math.isfinite(out[k]) and out[k] > 0, k
    assert out["ratio"] == pytest.approx(out["delta_mem"] / out["backbone"])


def test_gate_profile_separates_value_tokens(trainer):
    eps = validation_set(trainer.cfg, 4, split="heldout")
    out = gate_profile(trainer, eps)
    assert 0 < out["value"] < 1 and 0 < out["other"] < 1
    assert out["value/other"] == pytest.approx(out["value"] / out["other"])
    layer = next(iter(trainer.dm.layers.values()))
    assert "project_packed" not in vars(layer)  # the spy is removed
    rows = trainer.dm.config.state_rows
    with torch.no_grad():  # gates driven up on one value's tokens only: the profile must see it
        emb = trainer.model.get_input_embeddings().weight
        ids = trainer.tok(" " + eps[0].answer, add_special_tokens=False)["input_ids"]
        saved = {k: (l.W.detach().clone(), l.c_b.detach().clone()) for k, l in trainer.dm.layers.items()}
        for l in trainer.dm.layers.values():
            l.W[3 * rows:] = 0
            l.c_b.fill_(-4.0)
        first = trainer.dm.layers[str(trainer.dm.layer_ids[0])]
        first.W[3 * rows:] = 50 * emb[ids].mean(0) / emb[ids].mean(0).norm()
    try:
        hot = gate_profile(trainer, eps[:1])
    finally:
        with torch.no_grad():
            for k, l in trainer.dm.layers.items():
                l.W.copy_(saved[k][0])
                l.c_b.copy_(saved[k][1])
    assert hot["value/other"] > 1.5


def test_ce_by_answer_groups_every_episode(trainer):
    from deltamem.train.sources import key_value, synthetic_chats

    eps = synthetic_chats(4, 1, novel=1.0, filler_turns=(0, 1)) + synthetic_chats(3, 2, filler_turns=(0, 1)) + key_value(3, 3)
    out = ce_by_answer(trainer, eps, batch=5)
    assert {k: v["episodes"] for k, v in out.items()} == {"made-up or spliced word": 4, "pool value": 3, "key_value": 3}
    for v in out.values():
        assert v["own"] > 0 and v["mismatched"] > 0
    assert answer_kind(synthetic_chats(1, 0, vocab=1.0, words=("harbor", "meadow", "quartz"))[0],
                       ("harbor", "meadow", "quartz")) == "vocabulary word"


def test_made_up_probe_reports_each_filler_count(trainer):
    out = made_up_probe(trainer, fillers=(0, 2), n=4)
    assert set(out) == {"0", "2"}
    for v in out.values():
        assert v["own"] > 0 and v["own/mismatched"] == pytest.approx(v["own"] / v["mismatched"])


def test_candidate_choice_zero_state_is_the_backbones_choice(trainer):
    """With a zero state the wrapped model is the frozen backbone, so the zero-state pick must equal the
    backbone's own lowest-CE candidate; accuracies are fractions and chance is 1 / candidates."""
    from deltamem.train.episode import answer_ce, collate_reads
    from deltamem.train.evaluate import candidate_choice
    from deltamem.train.sources import FACTS, synthetic_chats

    eps = synthetic_chats(6, 11, "heldout", (1, 1), (0, 1))
    out = candidate_choice(trainer, eps, "heldout", batch=3)
    assert out["episodes"] == 6
    assert all(0.0 <= out[k] <= 1.0 for k in ("own", "mismatched", "zero"))
    want_chance = sum(1 / len(FACTS[e.meta["attribute"]][1]) for e in eps) / 6
    assert out["chance"] == pytest.approx(want_chance)
    hits = 0
    for ep in eps:
        e = trainer.encode([ep])[0]
        cands = FACTS[ep.meta["attribute"]][1]
        prompt = e.read_ids[:e.answer_start]
        reads = collate_reads([(prompt + trainer.renderer.encode(c) + [trainer.end_id], len(prompt)) for c in cands],
                              trainer.pad_id)
        with torch.no_grad():
            hits += int(answer_ce(trainer.model, reads).argmin()) == cands.index(ep.answer)
    assert out["zero"] == pytest.approx(hits / 6)
    assert candidate_choice(trainer, eps, "train")["episodes"] == 0  # held-out values are no pool's


def test_made_up_choice_counts_and_controls(trainer):
    """Batches of 4 one-fact chats: chance is 1/4, every figure a fraction; with a zero state the pick is
    the frozen backbone's, the same for every memory-free pass, so it matches a direct computation."""
    from deltamem.train.episode import answer_ce, collate_reads
    from deltamem.train.evaluate import made_up_choice
    from deltamem.train.sources import synthetic_chats

    out = made_up_choice(trainer, n=8, seed=3, batch=4)
    assert out["episodes"] == 8 and out["chance"] == pytest.approx(0.25)
    assert all(0.0 <= out[k] <= 1.0 for k in ("own", "mismatched", "zero"))
    eps = synthetic_chats(8, 3, "train", (1, 1), (0, 0), novel=1.0)
    hits = 0
    for i in range(0, 8, 4):
        part = eps[i:i + 4]
        for j, ep in enumerate(part):
            e = trainer.encode([ep])[0]
            prompt = e.read_ids[:e.answer_start]
            reads = collate_reads([(prompt + trainer.renderer.encode(p.answer) + [trainer.end_id], len(prompt))
                                   for p in part], trainer.pad_id)
            with torch.no_grad():
                hits += int(answer_ce(trainer.model, reads).argmin()) == j
    assert out["zero"] == pytest.approx(hits / 8)


def test_heldout_report_under_a_recipe_with_vocabulary_values(tiny_dir, tmp_path):
    """A recipe that draws real-word values (stage 3/5 style) must still give the whole held-out report."""
    from deltamem.train import TrainConfig
    from deltamem.train.evaluate import heldout_report

    from train_helpers import TINY_TRAIN

    cfg = TrainConfig(**{**TINY_TRAIN, "backbone": tiny_dir, "out_dir": str(tmp_path / "v"), "vocab_values": 0.5})
    tr = Trainer(cfg, progress=False)
    rep = heldout_report(tr, n=4)
    for split in ("heldout", "train"):
        assert {"ce", "ce_by_answer", "candidates", "gates", "accuracy", "first_token"} <= set(rep[split])
    assert set(rep["made_up_probe"]) == {"0", "1", "3", "6"}
    assert set(rep["made_up_choice"]) == {"own", "mismatched", "zero", "chance", "episodes"}
    assert {"ce", "accuracy"} <= set(rep["heldout_values_training_templates"])
    assert {"accuracy", "first_token", "samples"} <= set(rep["heldout_one_fact"])


def test_one_fact_greedy_answers_heldout_values(trainer):
    from deltamem.train.evaluate import one_fact_greedy
    from deltamem.train.sources import FACTS

    out = one_fact_greedy(trainer, n=4)
    assert out["accuracy"]["episodes"] == 4
    heldout = {v for attr in FACTS.values() for v in attr[1]}
    for s in out["samples"]:
        assert s["answer"] in heldout


def test_training_templates_restate_heldout_values_in_seen_phrasings():
    from deltamem.train.evaluate import training_templates
    from deltamem.train.sources import FACTS, fact_updates, key_value, synthetic_chats

    eps = synthetic_chats(20, 3, split="heldout", facts_per_episode=(1, 3)) + fact_updates(10, 3, split="heldout")
    eps += key_value(2, 3)
    out = training_templates(eps)
    train_stmts = {t for a in FACTS.values() for t in a[2]}
    for before, after in zip(eps, out):
        assert (after.answer, after.values, len(after.history)) == (before.answer, before.values, len(before.history))
        if before.kind == "key_value":
            assert after == before
            continue
        attr = before.meta["attribute"]
        assert after.question in {q.format(n=before.history[0]["name"]) for q in FACTS[attr][4]}
        stated = [m["content"].removeprefix("Update: ") for m in after.history
                  if m["role"] == "user" and any(v in m["content"] for v in before.values)]
        assert len(stated) == len(before.values)
        assert all(any(s == t.format(v=v) for t in train_stmts for v in before.values) for s in stated)
