"""Made-up values (the memory must carry them) and the preservation term (KL to the frozen backbone on
plain text read with an episode's memory)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from deltamem.adapter import MemoryState
from deltamem.train import Trainer, TrainConfig
from deltamem.train.data import plain_text_chunks
from deltamem.train.sources import FACTS, fact_updates, pseudo_word, synthetic_chats
from train_helpers import TINY_TRAIN, locomo_fixture

POOLS = {v for attr in FACTS.values() for pool in attr[:2] for v in pool}


def test_novel_values_are_made_up_stated_and_answered():
    eps = synthetic_chats(40, 5, novel=1.0, filler_turns=(0, 2))
    for ep in eps:
        assert ep.answer not in POOLS and ep.answer.isalpha()
        assert sum(ep.answer in m["content"] for m in ep.history) == 1
    for ep in fact_updates(40, 5, novel=1.0):
        assert ep.answer not in POOLS and ep.meta["old"] not in POOLS and ep.answer != ep.meta["old"]
        assert ep.answer in ep.history[-2]["content"] and ep.meta["old"] in ep.history[0]["content"]


def test_novel_zero_keeps_the_original_stream_and_mixes_otherwise():
    assert synthetic_chats(30, 2) == synthetic_chats(30, 2, novel=0.0)
    assert fact_updates(30, 2) == fact_updates(30, 2, novel=0.0)
    made_up = sum(ep.answer not in POOLS for ep in synthetic_chats(200, 3, novel=0.5))
    assert 60 < made_up < 140


def test_novel_values_never_reach_the_heldout_split():
    with pytest.raises(ValueError, match="novel"):
        synthetic_chats(1, 0, "heldout", novel=0.5)
    with pytest.raises(ValueError, match="novel"):
        fact_updates(1, 0, "train", novel=1.5)


def test_pseudo_word_shape():
    import random

    rng = random.Random(0)
    words = [pseudo_word(rng, capital=True) for _ in range(100)]
    assert all(w[0].isupper() and w[1:].islower() and 4 <= len(w) <= 6 for w in words)
    assert len(set(words)) > 90


def test_plain_text_chunks_are_exact_length(tokenizer):
    chunks = plain_text_chunks(tokenizer, ["word " * 100, "short"], 16)
    assert chunks and all(len(c) == 16 for c in chunks)
    assert plain_text_chunks(tokenizer, ["short"], 16) == []


@pytest.fixture
def locomo_file(tmp_path):
    path = tmp_path / "locomo.json"
    samples = locomo_fixture()
    samples[0]["conversation"]["session_1"] *= 8  # enough text for several chunks
    path.write_text(json.dumps(samples))
    return str(path)


def test_recipe_needs_conversations_for_preserve(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="preserve_conversations"):
        TrainConfig(**{**TINY_TRAIN, "backbone": tiny_dir, "preserve": 0.5})
    with pytest.raises(ValueError, match="novel_values"):
        TrainConfig(**{**TINY_TRAIN, "backbone": tiny_dir, "novel_values": 2.0})


def test_preserve_kl_is_zero_for_a_zero_state_and_trains(make_cfg, locomo_file):
    cfg = make_cfg(preserve=0.5, preserve_conversations=["conv-x"], locomo_path=locomo_file, preserve_tokens=16,
                   novel_values=0.5)
    tr = Trainer(cfg, progress=False)
    assert len(tr.plain) >= 2
    zero = MemoryState.zeros(tr.model, 2, tr.device)
    assert torch.allclose(tr.preserve_kl(zero, [0, 1]), torch.zeros(2), atol=1e-6)
    state = MemoryState.zeros(tr.model, 2, tr.device)
    for t in state.tensors:
        t.normal_()
    assert (tr.preserve_kl(state, [0, 1]) > 0).all()
    rec = tr.train_step(tr.stream.batch(0, cfg.batch_size))
    assert rec["kl"] is not None and math.isfinite(rec["kl"]) and rec["kl"] >= 0
    assert math.isfinite(rec["ce"])


def test_preserve_plain_memory_replaces_rows_with_a_written_plain_memory(make_cfg, locomo_file):
    """With share 1 every row reads a memory written from plain text (so a zero episode state no longer
    gives KL 0), the gates get a gradient from it, and share 0 leaves the episode state alone."""
    cfg = make_cfg(preserve=0.5, preserve_conversations=["conv-x"], locomo_path=locomo_file, preserve_tokens=16,
                   preserve_plain_memory=1.0)
    tr = Trainer(cfg, progress=False)
    zero = MemoryState.zeros(tr.model, 2, tr.device)
    mixed = tr.plain_memory(zero, [0, 1])
    assert all(bool(t.abs().sum(dim=(1, 2, 3)).gt(0).all()) for t in mixed.tensors)
    kl = tr.preserve_kl(zero, [0, 1])
    assert (kl > 0).all()
    kl.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tr.params)
    tr.cfg.preserve_plain_memory = 0.0
    assert torch.allclose(tr.preserve_kl(zero, [0, 1]), torch.zeros(2), atol=1e-6)
    with pytest.raises(ValueError, match="preserve_plain_memory"):
        TrainConfig(**{**TINY_TRAIN, "preserve_plain_memory": 1.5})


def test_preserve_chat_reads_chat_exchanges(make_cfg, locomo_file):
    """With share 1 every row is the tail of a chat-template exchange ending in the assistant's reply, of
    exactly `preserve_tokens` tokens; it changes the KL rows; share 0 keeps the plain-text rows."""
    cfg = make_cfg(preserve=0.5, preserve_conversations=["conv-x"], locomo_path=locomo_file, preserve_tokens=16,
                   preserve_chat=1.0)
    tr = Trainer(cfg, progress=False)
    assert tr.chat and all(len(c) == 16 for c in tr.chat)
    end = tr.renderer.encode(tr.renderer.message({"role": "assistant", "content": "x"}))[-2:]
    assert all(c[-2:] == end for c in tr.chat)  # every chunk closes an assistant turn
    state = MemoryState.zeros(tr.model, 2, tr.device)
    for t in state.tensors:
        t.normal_()
    chat_kl = tr.preserve_kl(state, [0, 1])
    assert (chat_kl > 0).all()
    tr.cfg.preserve_chat = 0.0
    assert not torch.allclose(tr.preserve_kl(state, [0, 1]), chat_kl)
    with pytest.raises(ValueError, match="preserve_chat"):
        TrainConfig(**{**TINY_TRAIN, "preserve_chat": -0.1})


def test_preserve_qa_reads_general_questions_with_the_backbones_reply(make_cfg, locomo_file):
    """Share 1: every row is `preserve_tokens` long, holds a whole question, and continues with the frozen
    backbone's own greedy reply; the rows change the KL; share 0 leaves the plain/chat rows as before."""
    cfg = make_cfg(preserve=0.5, preserve_conversations=["conv-x"], locomo_path=locomo_file, preserve_tokens=24,
                   preserve_qa=1.0)
    tr = Trainer(cfg, progress=False)
    assert tr.qa and all(len(r) == 24 for r in tr.qa)
    sys_ids = tr.renderer.system_ids
    header = tr.renderer.prompt([], None)[len(sys_ids):]  # the assistant turn's opening tokens
    for row in tr.qa[:8]:
        kept = max(k for k in range(len(sys_ids) + 1) if row[:k] == sys_ids[len(sys_ids) - k:])
        full = sys_ids[: len(sys_ids) - kept] + row  # the row with the system prompt it was cut from
        cut = max(i for i in range(len(full) - len(header) + 1) if full[i:i + len(header)] == header) + len(header)
        with torch.no_grad():
            logits = tr.model(input_ids=torch.tensor([full])).logits[0]
        assert logits[cut - 1:-1].argmax(-1).tolist() == full[cut:]  # the reply is the backbone's greedy one
    state = MemoryState.zeros(tr.model, 2, tr.device)
    for t in state.tensors:
        t.normal_()
    qa_kl = tr.preserve_kl(state, [0, 1])
    assert (qa_kl > 0).all()
    assert [tr.preserve_row(s) for s in (0, 1)] == [tr.qa[0], tr.qa[1]]
    tr.cfg.preserve_qa = 0.0
    assert [tr.preserve_row(s) for s in (0, 1)] == [tr.plain[0], tr.plain[1 % len(tr.plain)]]
    with pytest.raises(ValueError, match="preserve_qa"):
        TrainConfig(**{**TINY_TRAIN, "preserve_qa": 2.0})


def test_preserve_qa_questions_are_not_the_general_eval_set():
    from deltamem.eval.general import QA
    from deltamem.train.questions import QUESTIONS

    asked = {q.lower() for q, _ in QA}
    assert len(set(QUESTIONS)) == len(QUESTIONS) and not asked & {q.lower() for q in QUESTIONS}
    assert not any("capital of" in q.lower() for q in QUESTIONS)
