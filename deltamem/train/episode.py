"""Episodes -> tensors: one write pass over the history, one read pass over `[system] + question + answer`.

The write pass is planned by `runtime.render.plan_writes` and run by
`runtime.writer.run_write`, the same code `MemorySession.write` uses.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..runtime.render import Renderer, WritePass, check_messages, plan_writes
from .sources import Episode


@dataclass
class EncodedEpisode:
    write: WritePass  # [1, T_w]
    read_ids: list[int]  # [system] + window + question + answer + end
    answer_start: int  # index of the first answer token in read_ids
    window_read_ids: list[int]  # the same with the whole history in the prompt (for the "window" control)
    window_answer_start: int
    value: torch.Tensor | None = None  # [T_w] bool: the write tokens holding a stated value (gate supervision)


def encode_episode(renderer: Renderer, ep: Episode, granularity: str, max_write_tokens: int, max_read_tokens: int,
                   end_id: int, recent_messages: int = 0) -> EncodedEpisode | None:
    """Encode one episode; None when its answer cannot fit `max_read_tokens` (the caller counts drops).

    The history keeps its last messages that fit `max_write_tokens` (one pass);
    `recent_messages` of them are also shown in the read window.
    """
    history = check_messages(ep.history, where="episode history")
    ans = renderer.encode(ep.answer) + [end_id]
    while True:
        passes, _ = plan_writes(renderer, [], history, segment_tokens=max_write_tokens, context_tokens=0,
                                granularity=granularity)
        if len(passes) <= 1 or len(history) <= 1:
            break
        history = history[1:]
    if not passes:
        return None
    window = history[-recent_messages:] if recent_messages else []
    prompt = renderer.prompt(window, ep.question)
    full_prompt = renderer.prompt(history, ep.question)
    if len(prompt) + len(ans) > max_read_tokens:
        return None
    ids = passes[0].input_ids[0].tolist()
    value = torch.zeros(len(ids), dtype=torch.bool)
    for v in ep.values:
        value |= value_mask(ids, renderer.encode(" " + v))
    return EncodedEpisode(passes[0], prompt + ans, len(prompt), full_prompt + ans, len(full_prompt), value)


def value_mask(write_ids: list[int], value_ids: list[int]) -> torch.Tensor:
    """`[T]` bool: the write-pass tokens where `value_ids` (an answer's tokens) occur, every occurrence."""
    mask = torch.zeros(len(write_ids), dtype=torch.bool)
    n = len(value_ids)
    if n == 0:
        return mask
    for i in range(len(write_ids) - n + 1):
        if write_ids[i:i + n] == value_ids:
            mask[i:i + n] = True
    return mask


def collate_reads(seqs: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad `(ids, answer_start)` rows: `input_ids`, `attention_mask`, `labels` (-100 off the answer)."""
    T = max(len(ids) for ids, _ in seqs)
    B = len(seqs)
    ids_t = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    for i, (ids, start) in enumerate(seqs):
        ids_t[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
        labels[i, start: len(ids)] = torch.tensor(ids[start:])
    return {"input_ids": ids_t, "attention_mask": mask, "labels": labels}


def answer_ce(model, batch: dict[str, torch.Tensor], state=None) -> torch.Tensor:
    """Per-row mean cross-entropy over the answer tokens of a read batch -> `[B]`.

    Runs the decoder stack with `state` bound read-only (None: no memory) and
    applies the LM head to the answer positions only.
    """
    from ..adapter import use_memory

    dev = next(model.parameters()).device
    ids, mask, labels = (batch[k].to(dev) for k in ("input_ids", "attention_mask", "labels"))
    ctx = use_memory(model, state, write=False) if state is not None else contextlib.nullcontext()
    with ctx:
        hidden = model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    target = labels[:, 1:]
    sel = target != -100  # [B, T-1]
    logits = model.get_output_embeddings()(hidden[:, :-1][sel]).float()  # [N, V]
    ce = torch.nn.functional.cross_entropy(logits, target[sel], reduction="none")
    rows = sel.nonzero()[:, 0]
    B = ids.shape[0]
    total = torch.zeros(B, device=dev).index_add(0, rows, ce)
    return total / sel.sum(1).clamp_min(1)
