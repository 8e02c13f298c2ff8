"""Batched answering after a conversation's shared prefix, and the gold answer's cross-entropy there.

Every question of a conversation sees the same prefix (system prompt, and for
some methods a window, summary or the whole history): its KV cache
(`runtime.generate.PrefixCache`) is prefilled once, copied for each batch, and
only the question tokens and the answer are computed per question. A memory
state, when given, is bound read-only for the prefix and for every step (so
answering never changes it). Both functions go through the runtime's one
generation path (`prefill`, `generate_tokens`): an answer here is the one
`generate_tokens` gives for the whole prompt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..adapter import MemoryState
from ..runtime.generate import GenerationConfig, PrefixCache, generate_tokens, prefill


def _rows_state(prefix: PrefixCache, rows: int) -> MemoryState | None:
    return MemoryState.cat([prefix.state] * rows) if prefix.state is not None else None


def answer_batch(prefix: PrefixCache, suffixes: list[list[int]], cfg: GenerationConfig, stop: set[int],
                 pad_id: int) -> list[list[int]]:
    """Greedy (or sampled) continuations of `prefix + suffix` for each suffix; returns each row's new tokens
    (the stop token excluded). Suffixes are left-padded after the prefix; padded slots are masked out."""
    if not suffixes:
        return []
    if any(not s for s in suffixes):
        raise ValueError("every question suffix needs at least one token")
    out: list[list[int]] = [[] for _ in suffixes]
    state = _rows_state(prefix, len(suffixes))
    for step in generate_tokens(prefix.model, suffixes, state, cfg, stop, pad_id, prefix=prefix):
        for row, t in zip(out, step):
            if t is not None:
                row.append(t)
    return out


@torch.inference_mode()
def answer_ce(prefix: PrefixCache, suffixes: list[list[int]], targets: list[list[int]], pad_id: int) -> list[float]:
    """Teacher-forced mean cross-entropy (nats per token) of each target after `prefix + suffix`: one
    forward over suffix + target per row, batched, the LM head applied to the answer positions only."""
    if len(suffixes) != len(targets):
        raise ValueError(f"{len(suffixes)} suffixes but {len(targets)} targets")
    if not suffixes:
        return []
    if any(not s for s in suffixes) or any(not t for t in targets):
        raise ValueError("every question suffix and every target needs at least one token")
    B, K = len(targets), max(len(t) for t in targets) + 1  # the last K positions predict every target token
    rows = [s + t for s, t in zip(suffixes, targets)]
    logits = prefill(prefix.model, rows, _rows_state(prefix, B), pad_id, prefix, keep=K).logits  # [B, K, V]
    gold = torch.full((B, K - 1), -100, dtype=torch.long, device=logits.device)
    for i, t in enumerate(targets):  # rows are left-padded: every target ends at the last position
        gold[i, K - 1 - len(t):] = torch.tensor(t, device=logits.device)
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), gold, ignore_index=-100, reduction="none")  # [B, K-1]
    return (nll.sum(1) / (gold != -100).sum(1)).tolist()
