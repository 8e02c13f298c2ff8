"""Batched greedy answering after a shared prefix whose KV cache is computed once.

Every question of a conversation sees the same prefix (system prompt, and for
some methods a window, summary or the whole history): its KV cache is
prefilled once, copied for each batch, and only the question tokens and the
answer are computed per question. A memory state, when given, is bound
read-only for the prefix and for every step (so answering never changes it).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import torch

from ..adapter import MemoryState, use_memory
from ..runtime.generate import GenerationConfig, _cache_kw, _pick


class PrefixCache:
    """The KV cache of `prefix_ids` (one row), computed with `state` bound read-only when given."""

    @torch.inference_mode()
    def __init__(self, model, prefix_ids: list[int], state: MemoryState | None = None):
        if not prefix_ids:
            raise ValueError("the shared prefix is empty (it holds at least the system prompt)")
        self.model, self.state, self.length = model, state, len(prefix_ids)
        self.key = _cache_kw(model)
        dev = next(model.parameters()).device
        with _bound(model, state):
            out = model(input_ids=torch.tensor([prefix_ids], device=dev), use_cache=True)
        self.cache = getattr(out, self.key)

    def expanded(self, rows: int):
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(rows)
        return cache


def _bound(model, state):
    return use_memory(model, state, write=False) if state is not None else nullcontext()


@torch.inference_mode()
def answer_batch(prefix: PrefixCache, suffixes: list[list[int]], cfg: GenerationConfig, stop: set[int],
                 pad_id: int) -> list[list[int]]:
    """Greedy (or sampled) continuations of `prefix + suffix` for each suffix; returns each row's new tokens
    (the stop token excluded). Suffixes are left-padded after the prefix; padded slots are masked out."""
    model = prefix.model
    B = len(suffixes)
    if B == 0:
        return []
    if any(not s for s in suffixes):
        raise ValueError("every question suffix needs at least one token")
    dev = next(model.parameters()).device
    S, P = max(len(s) for s in suffixes), prefix.length
    ids = torch.full((B, S), pad_id, dtype=torch.long, device=dev)
    mask = torch.zeros(B, P + S, dtype=torch.long, device=dev)
    mask[:, :P] = 1
    for i, s in enumerate(suffixes):
        ids[i, S - len(s):] = torch.tensor(s, device=dev)
        mask[i, P + S - len(s):] = 1
    pos = (P + mask[:, P:].cumsum(-1) - 1).clamp_min(P)
    state = MemoryState.cat([prefix.state] * B) if prefix.state is not None else None
    gen = torch.Generator(device=dev).manual_seed(cfg.seed) if cfg.seed is not None else None
    key = prefix.key
    cache = prefix.expanded(B)
    out_tokens: list[list[int]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    x = ids
    for step in range(cfg.max_new_tokens):
        with _bound(model, state):
            out = model(input_ids=x, attention_mask=mask, position_ids=pos, use_cache=True, **{key: cache})
        cache = getattr(out, key)
        nxt = _pick(out.logits[:, -1], cfg, gen).to(dev)
        for i, t in enumerate(nxt.tolist()):
            if not done[i] and t in stop:
                done[i] = True
            elif not done[i]:
                out_tokens[i].append(int(t))
        if bool(done.all()) or step == cfg.max_new_tokens - 1:
            break
        x = nxt.unsqueeze(1)
        mask = torch.cat([mask, (~done).long().unsqueeze(1)], dim=1)
        pos = pos[:, -1:] + 1
    return out_tokens
