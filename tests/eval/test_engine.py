"""Answering after a prefilled shared prefix gives the same tokens as generating from the whole prompt,
with and without a memory, for a batch of questions of different lengths; the memory is unchanged. The gold
answer's teacher-forced cross-entropy after the cached prefix equals a plain forward's."""

from __future__ import annotations

import pytest
import torch

from deltamem.adapter import MemoryState, use_memory
from deltamem.eval.engine import answer_batch, answer_ce
from deltamem.runtime.generate import GenerationConfig, PrefixCache, generate_tokens


def reference(model, prompts, state, cfg, stop):
    rows = [[] for _ in prompts]
    st = MemoryState.cat([state] * len(prompts)) if state is not None else None
    for step in generate_tokens(model, prompts, st, cfg, stop, pad_id=0):
        for i, t in enumerate(step):
            if t is not None:
                rows[i].append(t)
    return rows


@pytest.mark.parametrize("with_memory", [False, True], ids=["backbone", "memory"])
def test_prefix_cache_matches_full_prompt_generation(tiny, with_memory, lm_head_hook):
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(3, 5000, (40,), generator=g).tolist()
    suffixes = [torch.randint(3, 5000, (n,), generator=g).tolist() for n in (3, 9, 1, 6)]
    state = None
    if with_memory:
        state = MemoryState.zeros(tiny, 1)
        with torch.no_grad(), use_memory(tiny, state, write=True):
            tiny(torch.randint(3, 5000, (1, 30), generator=g))
    before = [t.clone() for t in state.tensors] if state is not None else []
    cfg = GenerationConfig(max_new_tokens=6)
    lm_head_hook(tiny, forbid=True)  # random models rarely stop; make sure none does, so all 6 steps compare
    pc = PrefixCache(tiny, prefix, state)
    got = answer_batch(pc, suffixes, cfg, stop={2}, pad_id=0)
    want = reference(tiny, [prefix + s for s in suffixes], state, cfg, {2})
    assert got == want and all(len(r) == 6 for r in got)
    again = answer_batch(pc, suffixes[:2], cfg, stop={2}, pad_id=0)  # the prefix cache is reusable
    assert again == want[:2]
    for a, b in zip(before, state.tensors if state is not None else []):
        assert torch.equal(a, b)


def test_rows_stop_independently(tiny, lm_head_hook):
    """Row 0 is forced to stop at its 2nd token, row 1 at its 4th; row 1's tokens are those it gets alone."""
    pc = PrefixCache(tiny, [5, 6, 7])
    lm_head_hook(tiny, forbid=True)
    alone = answer_batch(pc, [[9, 10]], GenerationConfig(max_new_tokens=3), stop={2}, pad_id=0)[0]
    calls = {"n": 0}

    def force(module, args, output):
        calls["n"] += 1
        out = output.clone()
        for row, at in ((0, 2), (1, 4)):
            if calls["n"] == at:
                out[row, -1, 2] = out.max() + 100.0
        return out

    h = tiny.lm_head.register_forward_hook(force)
    try:
        rows = answer_batch(pc, [[8], [9, 10]], GenerationConfig(max_new_tokens=8), stop={2}, pad_id=0)
    finally:
        h.remove()
    assert [len(r) for r in rows] == [1, 3]
    assert rows[1] == alone


def test_empty_inputs_are_refused_or_trivial(tiny):
    with pytest.raises(ValueError, match="prefix is empty"):
        PrefixCache(tiny, [])
    pc = PrefixCache(tiny, [5])
    assert answer_batch(pc, [], GenerationConfig(), {2}, 0) == []
    with pytest.raises(ValueError, match="at least one token"):
        answer_batch(pc, [[]], GenerationConfig(), {2}, 0)


def reference_ce(model, prompt, target, state):
    """Mean CE of `target` after `prompt` from one plain forward over the whole row (no cache, no padding)."""
    ids = torch.tensor([prompt + target])
    with torch.no_grad():
        if state is None:
            logits = model(input_ids=ids).logits
        else:
            with use_memory(model, state.clone(), write=False):
                logits = model(input_ids=ids).logits
    lp = logits[0, len(prompt) - 1:-1].float().log_softmax(-1)
    return float(-lp[torch.arange(len(target)), torch.tensor(target)].mean())


@pytest.mark.parametrize("with_memory", [False, True], ids=["backbone", "memory"])
def test_answer_ce_matches_a_plain_forward_per_row(tiny, with_memory):
    g = torch.Generator().manual_seed(1)
    prefix = torch.randint(3, 5000, (25,), generator=g).tolist()
    suffixes = [torch.randint(3, 5000, (n,), generator=g).tolist() for n in (4, 1, 7)]
    targets = [torch.randint(3, 5000, (n,), generator=g).tolist() for n in (3, 5, 1)]
    state = None
    if with_memory:
        state = MemoryState.zeros(tiny, 1)
        with torch.no_grad(), use_memory(tiny, state, write=True):
            tiny(torch.randint(3, 5000, (1, 30), generator=g))
    before = [t.clone() for t in state.tensors] if state is not None else []
    got = answer_ce(PrefixCache(tiny, prefix, state), suffixes, targets, pad_id=0)
    want = [reference_ce(tiny, prefix + s, t, state) for s, t in zip(suffixes, targets)]
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert all(x > 0 for x in got) and len(set(got)) == 3
    for a, b in zip(before, state.tensors if state is not None else []):
        assert torch.equal(a, b)


def test_answer_ce_with_the_zero_memory_is_the_backbones(tiny):
    prefix, suffixes, targets = [5, 6, 7, 8], [[9, 10], [11]], [[12, 13, 14], [15]]
    bare = answer_ce(PrefixCache(tiny, prefix), suffixes, targets, 0)
    zero = answer_ce(PrefixCache(tiny, prefix, MemoryState.zeros(tiny, 1)), suffixes, targets, 0)
    assert zero == pytest.approx(bare, rel=1e-5, abs=1e-6)


def test_answer_ce_refuses_bad_rows(tiny):
    pc = PrefixCache(tiny, [5])
    assert answer_ce(pc, [], [], 0) == []
    with pytest.raises(ValueError, match="at least one token"):
        answer_ce(pc, [[3]], [[]], 0)
    with pytest.raises(ValueError, match="targets"):
        answer_ce(pc, [[3]], [], 0)
