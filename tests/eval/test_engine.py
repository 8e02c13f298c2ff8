"""Answering after a prefilled shared prefix gives the same tokens as generating from the whole prompt,
with and without a memory, for a batch of questions of different lengths; the memory is unchanged."""

from __future__ import annotations

import pytest
import torch

from deltamem.adapter import MemoryState, use_memory
from deltamem.eval.engine import PrefixCache, answer_batch
from deltamem.runtime.generate import GenerationConfig, generate_tokens


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
