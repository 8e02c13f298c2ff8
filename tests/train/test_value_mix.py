"""Real-word values from the backbone's vocabulary and attribute-generic phrasings: training split only,
grounded in the history, and never a held-out value, name or template."""

from __future__ import annotations

import re

import pytest

from deltamem.train import Trainer, TrainConfig
from deltamem.train.data import EpisodeStream, validation_set, vocabulary_words
from deltamem.train.sources import (FACTS, GENERIC_QUESTIONS, GENERIC_STATEMENTS, NAMES, NOUNS, SYNONYMS,
                                    VARIED_QUESTIONS, VARIED_STATEMENTS, fact_updates, synthetic_chats)
from train_helpers import TINY_TRAIN

WORDS = ("harbor", "meadow", "quartz", "lantern", "pebble")
POOLS = {v for attr in FACTS.values() for pool in attr[:2] for v in pool}
HELDOUT_TEMPLATES = {t for attr in FACTS.values() for t in attr[3] + attr[5]}


def test_vocab_values_come_from_the_word_list_and_are_answered():
    for ep in synthetic_chats(40, 1, vocab=1.0, words=WORDS, filler_turns=(0, 2)):
        assert ep.answer.lower() in WORDS
        assert any(ep.answer in m["content"] for m in ep.history if m["role"] == "user")
    for ep in fact_updates(40, 1, vocab=1.0, words=WORDS):
        assert ep.answer.lower() in WORDS and ep.meta["old"].lower() in WORDS and ep.answer != ep.meta["old"]
        assert ep.answer in ep.history[-2]["content"]


def test_capitalised_attributes_get_capitalised_words():
    for ep in synthetic_chats(60, 2, vocab=1.0, words=WORDS):
        cap = ep.meta["attribute"] in {"pet", "city", "month", "sibling", "car"}
        assert ep.answer == (ep.answer.capitalize() if cap else ep.answer.lower())


def test_mixture_shares_and_the_unchanged_default_stream():
    assert synthetic_chats(30, 4) == synthetic_chats(30, 4, vocab=0.0, words=WORDS, generic=0.0)
    eps = synthetic_chats(300, 4, vocab=0.5, novel=0.5, words=WORDS)
    vocab = sum(ep.answer.lower() in WORDS for ep in eps)
    pool = sum(ep.answer in POOLS for ep in eps)
    assert 110 < vocab < 190 and 40 < pool < 110 and vocab + pool < 300  # the rest are made up


def test_generic_phrasings_are_used_and_never_a_heldout_template():
    eps = synthetic_chats(200, 5, generic=0.5)
    generic_q = [re.escape(q).replace(re.escape("{n}"), ".+").replace(re.escape("{noun}"), ".+") for q in GENERIC_QUESTIONS]
    hits = sum(any(re.fullmatch(p, ep.question) for p in generic_q) for ep in eps)
    assert 60 < hits < 140
    assert not HELDOUT_TEMPLATES & set(GENERIC_STATEMENTS + GENERIC_QUESTIONS)
    for ep in eps:  # the stated value is still in the history, whichever phrasing stated it
        assert any(ep.answer in m["content"] for m in ep.history)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def test_varied_phrasings_are_used_grounded_and_never_a_heldout_template():
    assert synthetic_chats(30, 6, generic=0.5) == synthetic_chats(30, 6, generic=0.5, varied=0.0)
    eps = synthetic_chats(300, 6, generic=1.0, varied=1.0) + fact_updates(100, 6, generic=1.0, varied=1.0)
    frames = [re.escape(q).replace(re.escape("{n}"), ".+").replace(re.escape("{noun}"), ".+") for q in VARIED_QUESTIONS]
    assert sum(any(re.fullmatch(p, ep.question) for p in frames) for ep in eps) > 150
    nouns = {n for ep in eps for n in SYNONYMS[ep.meta["attribute"]] if n in ep.question}
    assert len(nouns) > 15  # the synonyms are drawn, not only the one noun per attribute
    for ep in eps:
        assert any(ep.answer in m["content"] for m in ep.history)
    assert not HELDOUT_TEMPLATES & set(VARIED_STATEMENTS + VARIED_QUESTIONS)
    for attr in FACTS:  # no synonym brings in a word only held-out templates use
        train = FACTS[attr][2] + FACTS[attr][4] + GENERIC_STATEMENTS + GENERIC_QUESTIONS + [NOUNS[attr]]
        seen = _words(" ".join(train))
        held_only = _words(" ".join(FACTS[attr][3] + FACTS[attr][5])) - seen
        for noun in SYNONYMS[attr]:
            assert not _words(noun) & held_only, (attr, noun)


def test_mixture_is_refused_on_the_heldout_split_and_without_words():
    for kw in ({"vocab": 0.5, "words": WORDS}, {"generic": 0.5}, {"varied": 0.5}):
        with pytest.raises(ValueError, match="only used with split='train'"):
            synthetic_chats(1, 0, "heldout", **kw)
    with pytest.raises(ValueError, match="list of at least 3 words"):
        fact_updates(1, 0, vocab=0.5)
    cfg = TrainConfig(sources={"synthetic": 1.0}, vocab_values=0.5)
    with pytest.raises(ValueError, match="vocab_values"):
        EpisodeStream(cfg)
    held = validation_set(cfg, 6, split="heldout", words=WORDS)  # the held-out split ignores the mixture
    assert all(ep.answer in POOLS for ep in held)


@pytest.mark.parametrize("key", ["vocab_values", "generic_templates", "varied_templates"])
def test_recipe_rejects_shares_outside_0_1(key):
    with pytest.raises(ValueError, match=key):
        TrainConfig(**{key: 1.5})


def test_vocabulary_words_exclude_heldout_values_and_names(tokenizer):
    words = vocabulary_words(tokenizer)
    assert len(words) > 5000 and list(words) == sorted(set(words))
    assert all(w.isalpha() and w.islower() and 4 <= len(w) <= 10 for w in words)
    banned = {v.lower() for attr in FACTS.values() for v in attr[1]} | {n.lower() for n in NAMES["heldout"]}
    assert not banned & set(words)
    assert {"harbor", "window", "garden"} <= set(words)


def test_trainer_builds_the_word_list_when_the_recipe_asks(tiny_dir):
    cfg = TrainConfig(**{**TINY_TRAIN, "backbone": tiny_dir, "vocab_values": 1.0, "sources": {"synthetic": 1.0}})
    tr = Trainer(cfg, progress=False)
    assert len(tr.words) > 5000
    batch = tr.stream.batch(0, 4)
    assert all(ep.answer.lower() in tr.words for ep in batch)
    assert tr.train_step(batch)["ce"] > 0


def test_blend_values_splice_two_words_and_stay_out_of_the_heldout_split():
    from deltamem.train.sources import BANNED, blend_word

    eps = synthetic_chats(60, 6, blend=1.0, words=WORDS, filler_turns=(0, 1))
    for ep in eps:
        w = ep.answer.lower()
        assert w not in BANNED and w not in WORDS and 4 <= len(w) <= 11
        assert any(w.startswith(a[:2]) for a in WORDS) and any(w.endswith(b[-1]) for b in WORDS)
        assert any(ep.answer in m["content"] for m in ep.history if m["role"] == "user")
    assert len({ep.answer.lower() for ep in eps}) > 30  # varied, not a handful of fixed splices
    for ep in fact_updates(30, 6, blend=1.0, words=WORDS):
        assert ep.answer != ep.meta["old"] and ep.answer in ep.history[-2]["content"]
    # a spliced word equal to a held-out value is drawn again: "pix" + "xel" can only make "pixel"
    assert all(blend_word(__import__("random").Random(i), ("pixa", "texel", "maroon")) != "pixel" for i in range(50))
    assert synthetic_chats(20, 6, words=WORDS) == synthetic_chats(20, 6, blend=0.0, words=WORDS)
    with pytest.raises(ValueError, match="blend"):
        synthetic_chats(2, 6, split="heldout", blend=0.5, words=WORDS)
    with pytest.raises(ValueError, match="blend"):
        fact_updates(2, 6, blend=0.5)
    with pytest.raises(ValueError, match="blend_values"):
        EpisodeStream(TrainConfig(sources={"synthetic": 1.0}, blend_values=0.5))


KIN = {attr: (f"{attr}word", f"{attr}kin", f"{attr}like") for attr in FACTS}


def test_class_values_come_from_the_attributes_own_words_and_are_answered():
    eps = synthetic_chats(40, 7, kin=1.0, kin_words=KIN, filler_turns=(0, 2))
    for ep in eps:
        assert ep.answer in KIN[ep.meta["attribute"]]
        assert any(ep.answer in m["content"] for m in ep.history if m["role"] == "user")
    for ep in fact_updates(30, 7, kin=1.0, kin_words=KIN):
        assert {ep.answer, ep.meta["old"]} <= set(KIN[ep.meta["attribute"]]) and ep.answer != ep.meta["old"]
    assert synthetic_chats(20, 7, words=WORDS) == synthetic_chats(20, 7, kin=0.0, words=WORDS)
    mixed = synthetic_chats(300, 7, kin=0.5, kin_words=KIN)  # the rest: the split's pool
    kin = sum(ep.answer in KIN[ep.meta["attribute"]] for ep in mixed)
    assert 110 < kin < 190 and kin + sum(ep.answer in POOLS for ep in mixed) == 300


def test_class_values_are_refused_without_words_or_on_the_heldout_split():
    with pytest.raises(ValueError, match="only used with split='train'"):
        synthetic_chats(1, 0, "heldout", kin=0.5, kin_words=KIN)
    with pytest.raises(ValueError, match=r"class words for every attribute; too few for \['car'"):
        fact_updates(1, 0, kin=0.5, kin_words={**KIN, "car": ("Zed",)})
    with pytest.raises(ValueError, match="class_values"):
        EpisodeStream(TrainConfig(sources={"synthetic": 1.0}, class_values=0.5))
    with pytest.raises(ValueError, match="class_values"):
        TrainConfig(class_values=-0.1)


def test_class_words_are_real_words_near_each_pool_and_never_heldout():
    from deltamem.runtime.backbone import load_backbone
    from deltamem.train.data import class_words
    from deltamem.train.sources import BANNED, CAPITALISED

    model, tok = load_backbone(progress=False)
    kin = class_words(model, tok, k=30)
    pools = {v.lower() for attr in FACTS.values() for v in attr[0]}
    for attr, words in kin.items():
        assert len(words) == 30 and len(set(words)) == 30
        for w in words:
            assert len(tok.encode(" " + w, add_special_tokens=False)) == 1 and w.isalpha()
            assert w[0].isupper() == (attr in CAPITALISED)
            assert w.lower() not in BANNED | pools
            assert not any(w.lower().startswith(b) or b.startswith(w.lower()) for b in BANNED if len(b) >= 4)
    # near the pool in the backbone's embedding space: other jobs, other sports, other colours
    assert len({"surgeon", "therapist", "accountant", "gardener", "veterinarian"} & set(kin["job"])) >= 3
    assert len({"basketball", "soccer", "skiing", "bowling", "gymnastics"} & set(kin["sport"])) >= 3
    assert len({"brown", "violet", "grey", "gray", "indigo", "scarlet"} & set(kin["color"])) >= 3


def test_trainer_builds_class_words_when_the_recipe_asks(tiny_dir):
    cfg = TrainConfig(**{**TINY_TRAIN, "backbone": tiny_dir, "class_values": 1.0, "sources": {"synthetic": 1.0}})
    tr = Trainer(cfg, progress=False)
    assert set(tr.kin_words) == set(FACTS) and all(len(w) == 40 for w in tr.kin_words.values())
    batch = tr.stream.batch(0, 4)
    assert all(ep.answer in tr.kin_words[ep.meta["attribute"]] for ep in batch)
    assert tr.train_step(batch)["ce"] > 0
