"""Memories of long real conversations in the preservation term (`preserve_long_memory`)."""

from __future__ import annotations

import json

import pytest
import torch

from deltamem.adapter import MemoryState
from deltamem.data.locomo import load_locomo, locomo_messages
from deltamem.runtime.session import MemorySession
from deltamem.train import Trainer, TrainConfig
from deltamem.train.memories import conversation_memories
from train_helpers import TINY_TRAIN, locomo_fixture


@pytest.fixture
def locomo_file(tmp_path):
    path = tmp_path / "locomo.json"
    samples = locomo_fixture()
    samples[0]["conversation"]["session_1"] *= 8
    path.write_text(json.dumps(samples))
    return str(path)


def long_cfg(make_cfg, locomo_file, **kw):
    return make_cfg(**{"preserve": 0.5, "preserve_conversations": ["conv-x"], "locomo_path": locomo_file,
                       "preserve_tokens": 16, "preserve_long_memory": 1.0, "long_memory_tokens": 96,
                       "long_memory_every": 32, **kw})


def test_snapshots_are_the_session_memory_after_a_prefix(make_cfg, locomo_file):
    """Each snapshot is exactly the state of a session that wrote the conversation's first messages, taken
    once per `every` tokens and no further than `max_tokens`."""
    tr = Trainer(long_cfg(make_cfg, locomo_file, preserve_long_memory=0.0, preserve_chat=1.0), progress=False)
    messages = locomo_messages(load_locomo(locomo_file)[0])
    snaps = conversation_memories(tr.model, tr.tok, [messages], 96, 32, tr.renderer.system_prompt)
    session = MemorySession(tr.model, tr.tok, system_prompt=tr.renderer.system_prompt)
    expected, mark = [], 32
    for m in messages:
        session.write([{k: m[k] for k in ("role", "content", "name", "timestamp") if m.get(k)}])
        if session.tokens_written >= mark:
            expected.append(session.state.clone())
            mark = (session.tokens_written // 32 + 1) * 32
        if session.tokens_written >= 96:
            break
    assert 2 <= len(snaps) == len(expected) <= 3
    for a, b in zip(snaps, expected):
        assert all(torch.equal(x, y) for x, y in zip(a.tensors, b.tensors))
    assert not torch.equal(snaps[0].tensors[0], snaps[-1].tensors[0])
    assert all(t.abs().sum() > 0 and not t.requires_grad for t in snaps[0].tensors)
    with pytest.raises(ValueError, match="every"):
        conversation_memories(tr.model, tr.tok, [messages], 16, 32, tr.renderer.system_prompt)


def test_long_memory_rows_read_a_snapshot_continued_with_gradients(make_cfg, locomo_file):
    tr = Trainer(long_cfg(make_cfg, locomo_file), progress=False)
    assert tr.bank and all(s.batch_size == 1 for s in tr.bank)
    zero = MemoryState.zeros(tr.model, 2, tr.device)
    mixed = tr.long_memory(zero, [0, 1])
    assert all(bool(t.abs().sum(dim=(1, 2, 3)).gt(0).all()) for t in mixed.tensors)
    assert not any(torch.equal(mixed.rows([0]).tensors[0], s.tensors[0]) for s in tr.bank)  # one more exchange
    kl = tr.preserve_kl(zero, [0, 1])
    assert (kl > 0).all()
    kl.sum().backward()
    rows = tr.dm.config.state_rows
    write = [layer.W.grad[rows:3 * rows] for layer in tr.dm.layers.values()]  # W_k, W_v: the write side
    assert any(g is not None and g.abs().sum() > 0 for g in write)
    tr.cfg.preserve_long_memory = 0.0
    assert torch.allclose(tr.preserve_kl(zero, [0, 1]), torch.zeros(2), atol=1e-6)


def test_snapshots_are_rewritten_with_the_current_weights(make_cfg, locomo_file):
    tr = Trainer(long_cfg(make_cfg, locomo_file, long_memory_refresh=1, steps=2), progress=False)
    before = [s.tensors[0].clone() for s in tr.bank]
    with torch.no_grad():
        for layer in tr.dm.layers.values():
            layer.W.add_(0.05)
    tr.refresh_memories()
    assert len(tr.bank) == len(before)
    assert not all(torch.equal(s.tensors[0], b) for s, b in zip(tr.bank, before))
    tr.fit()  # refreshes at step 1, trains with the rows
    assert tr.step == 2


@pytest.mark.parametrize("kw, key", [({"long_memory_every": 0}, "long_memory_every"),
                                     ({"long_memory_every": 64, "long_memory_tokens": 32}, "long_memory_tokens"),
                                     ({"long_memory_refresh": -1}, "long_memory_refresh"),
                                     ({"preserve_long_memory": 1.5}, "preserve_long_memory")])
def test_bad_long_memory_keys_are_named(kw, key):
    with pytest.raises(ValueError, match=key):
        TrainConfig(**{**TINY_TRAIN, **kw})
