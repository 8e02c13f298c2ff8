"""Episode sources: seeded and deterministic, disjoint train/heldout pools, answers grounded in the history."""

from __future__ import annotations

import json
import re

import pytest

from deltamem.data.locomo import load_locomo
from deltamem.data.synthetic import FACTS, NAMES, Episode, fact_updates, synthetic_chats

GENERATORS = {
    "synthetic_train": lambda n, seed: synthetic_chats(n, seed, "train"),
    "synthetic_heldout": lambda n, seed: synthetic_chats(n, seed, "heldout"),
    "updates_train": lambda n, seed: fact_updates(n, seed, "train"),
    "updates_heldout": lambda n, seed: fact_updates(n, seed, "heldout"),
}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generators_are_seeded(name):
    gen = GENERATORS[name]
    a, b, c = gen(12, 5), gen(12, 5), gen(12, 6)
    assert a == b
    assert a != c
    assert len({ep.question + ep.answer for ep in a}) > 1  # the episodes within one call vary too
    for ep in a:
        assert isinstance(ep, Episode) and ep.answer and ep.question and ep.history
        for m in ep.history:
            assert m["role"] in ("user", "assistant") and m["content"].strip()
        assert [m["role"] for m in ep.history] == ["user", "assistant"] * (len(ep.history) // 2)


def test_synthetic_answer_is_stated_in_history():
    for split in ("train", "heldout"):
        for ep in synthetic_chats(60, 3, split, facts_per_episode=(1, 3), filler_turns=(0, 4)):
            user = [m["content"] for m in ep.history if m["role"] == "user"]
            assert any(ep.answer in u for u in user), (ep.question, ep.answer)
            assert ep.meta["facts"][ep.meta["attribute"]] == ep.answer
            name = ep.history[0].get("name") or next(m["name"] for m in ep.history if m.get("name"))
            assert name in ep.question


def test_synthetic_fact_and_filler_counts():
    for ep in synthetic_chats(30, 9, facts_per_episode=(2, 2), filler_turns=(3, 3)):
        assert len(ep.meta["facts"]) == 2
        assert len(ep.history) == 2 * (2 + 3)
    for ep in synthetic_chats(30, 9, facts_per_episode=(1, 1), filler_turns=(0, 0)):
        assert len(ep.history) == 2


def test_bad_split_is_refused():
    with pytest.raises(ValueError, match="split"):
        synthetic_chats(1, 0, "test")


def _values(split: str) -> set[str]:
    h = 0 if split == "train" else 1
    return {v for spec in FACTS.values() for v in spec[h]}


def _templates(kind: int, split: str) -> list[str]:
    """kind 2: statements, 4: questions; as regexes with `{v}` / `{n}` as wildcards."""
    h = 0 if split == "train" else 1
    return [re.escape(t).replace(r"\{v\}", ".+").replace(r"\{n\}", ".+")
            for spec in FACTS.values() for t in spec[kind + h]]


def test_pools_are_disjoint():
    assert not set(NAMES["train"]) & set(NAMES["heldout"])
    assert not (_values("train") | set(NAMES["train"])) & (_values("heldout") | set(NAMES["heldout"]))
    for attr, (tv, hv, ts, hs, tq, hq) in FACTS.items():
        assert len(tv) >= 2 and len(hv) >= 2, attr  # fact_updates samples two distinct values
        assert not set(tv) & set(hv), attr
        assert not set(ts) & set(hs), attr
        assert not set(tq) & set(hq), attr


@pytest.mark.parametrize("gen", [synthetic_chats, fact_updates])
def test_heldout_episodes_use_only_heldout_pools(gen):
    train_s, held_s = _templates(2, "train"), _templates(2, "heldout")
    train_q, held_q = _templates(4, "train"), _templates(4, "heldout")
    train_eps, held_eps = gen(150, 11, "train"), gen(150, 11, "heldout")
    for eps, own_s, other_s, own_q, other_q, values, names in (
            (train_eps, train_s, held_s, train_q, held_q, _values("train"), NAMES["train"]),
            (held_eps, held_s, train_s, held_q, train_q, _values("heldout"), NAMES["heldout"])):
        for ep in eps:
            assert ep.answer in values
            assert any(re.fullmatch(q, ep.question) for q in own_q), ep.question
            assert not any(re.fullmatch(q, ep.question) for q in other_q), ep.question
            for m in ep.history:
                if m["role"] != "user":
                    continue
                assert m["name"] in names
                text = m["content"].removeprefix("Update: ")
                assert not any(re.fullmatch(s, text) for s in other_s), text
    # the generated episodes share no answer value and no question text across splits
    assert not {e.answer for e in train_eps} & {e.answer for e in held_eps}
    assert not {e.question for e in train_eps} & {e.question for e in held_eps}
    # and every heldout template is actually used (the split is not just train minus nothing)
    used = {q for e in held_eps for q in held_q if re.fullmatch(q, e.question)}
    assert len(used) >= len(held_q) // 2


def test_fact_updates_answer_is_the_later_value():
    for split in ("train", "heldout"):
        for ep in fact_updates(60, 4, split, filler_turns=(0, 3)):
            old = ep.meta["old"]
            assert old != ep.answer
            user = [m["content"] for m in ep.history if m["role"] == "user"]
            assert old in user[0] and ep.answer not in user[0]
            assert user[-1].startswith("Update:") and ep.answer in user[-1]
            assert not any(ep.answer in u for u in user[:-1])  # only the update states the answer
