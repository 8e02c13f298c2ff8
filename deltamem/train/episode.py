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
    history_ids: list[int] | None = None  # the written history as prompt messages (another episode's teacher)
    question_ids: list[int] | None = None  # the question and generation prompt, then the answer
    answer_ids: list[int] | None = None


def teacher_reads(encoded: list["EncodedEpisode"], system_ids: list[int], shift: int = 0) -> list[tuple[list[int], int]]:
    """`(ids, answer_start)` rows of the frozen backbone reading a whole history in its prompt: row i holds
    the history of episode i - shift (0: its own; 1: the one whose memory `MemoryState.rolled()` gives it)
    and episode i's question and answer."""
    n = len(encoded)
    rows = []
    for i, e in enumerate(encoded):
        prompt = system_ids + encoded[(i - shift) % n].history_ids + e.question_ids
        rows.append((prompt + e.answer_ids, len(prompt)))
    return rows


def encode_episode(renderer: Renderer, ep: Episode, granularity: str, max_write_tokens: int, max_read_tokens: int,
                   end_id: int, recent_messages: int = 0, answer_space: bool = False) -> EncodedEpisode | None:
    """Encode one episode; None when its answer cannot fit `max_read_tokens` (the caller counts drops).
    `answer_space`: the answer is encoded with a leading space, as the value is written in the history.

    The history keeps its last messages that fit `max_write_tokens` (one pass);
    `recent_messages` of them are also shown in the read window.
    """
    history = check_messages(ep.history, where="episode history")
    ans = answer_ids(renderer, ep.answer, answer_space) + [end_id]
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
    sys_n = len(renderer.system_ids)
    q = renderer.prompt([], ep.question)[sys_n:]
    return EncodedEpisode(passes[0], prompt + ans, len(prompt), full_prompt + ans, len(full_prompt), value,
                          full_prompt[sys_n:len(full_prompt) - len(q)], q, ans)


def answer_ids(renderer: Renderer, answer: str, space: bool = False) -> list[int]:
    """An answer's tokens; `space`: as the value is written inside a sentence (" pharmacist")."""
    return renderer.encode(" " * space + answer)


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


@dataclass
class AnswerPass:
    """One read pass, restricted to the positions that predict an answer token (`N` over the batch)."""
    ce: torch.Tensor  # [B] mean answer CE per row
    rows: torch.Tensor  # [N] the batch row of each position
    logits: torch.Tensor  # [N, V] float32
    layers: torch.Tensor | None = None  # [L, N, d]: every decoder layer's output there (with `hidden=True`)


def answer_pass(model, batch: dict[str, torch.Tensor], state=None, hidden: bool = False) -> AnswerPass:
    """Run the decoder stack over a read batch with `state` bound read-only (None: no memory) and apply
    the LM head to the answer positions only; `hidden=True` also keeps every layer's output there."""
    from ..adapter import use_memory

    dev = next(model.parameters()).device
    ids, mask, labels = (batch[k].to(dev) for k in ("input_ids", "attention_mask", "labels"))
    ctx = use_memory(model, state, write=False) if state is not None else contextlib.nullcontext()
    with ctx:
        out = model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=hidden)
    target = labels[:, 1:]
    sel = target != -100  # [B, T-1]
    logits = model.get_output_embeddings()(out.last_hidden_state[:, :-1][sel]).float()  # [N, V]
    ce = torch.nn.functional.cross_entropy(logits, target[sel], reduction="none")
    rows = sel.nonzero()[:, 0]
    B = ids.shape[0]
    total = torch.zeros(B, device=dev).index_add(0, rows, ce)
    layers = torch.stack([h[:, :-1][sel] for h in out.hidden_states[1:]]) if hidden else None
    return AnswerPass(total / sel.sum(1).clamp_min(1), rows, logits, layers)


def answer_ce(model, batch: dict[str, torch.Tensor], state=None) -> torch.Tensor:
    """Per-row mean cross-entropy over the answer tokens of a read batch -> `[B]` (see `answer_pass`)."""
    return answer_pass(model, batch, state).ce


def distill_loss(own: AnswerPass, mis: AnswerPass, t_own: AnswerPass, t_mis: AnswerPass) -> torch.Tensor:
    """Per row `[B]`: fact-specific distillation from the frozen backbone reading a whole history in its
    prompt, at the positions that predict the answer (all four passes hold the same answer tokens, so
    their positions pair up in order).

    What the own history changes in the teacher, against another episode's history, is what the own
    memory must change in the memory-only pass, against that episode's memory: every decoder layer's
    `(own - mismatched)` output difference is matched, relative to the teacher's mean squared norm at
    that layer, averaged over layers. Differencing cancels what any memory or any history does (the
    answer format, "a chat came before"), so only the fact is distilled.
    """
    B = own.ce.shape[0]
    n = torch.bincount(own.rows, minlength=B).float()
    t_diff = (t_own.layers - t_mis.layers).detach()
    scale = t_own.layers.detach().pow(2).sum(-1).mean(-1, keepdim=True).clamp_min(1e-6)  # [L, 1]
    per_pos = (((own.layers - mis.layers) - t_diff).pow(2).sum(-1) / scale).mean(0)  # [N]
    return torch.zeros(B, device=n.device).index_add(0, own.rows, per_pos) / n.clamp_min(1)
