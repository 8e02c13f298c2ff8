"""Episodes -> tensors: one write pass over a history, then reads for the student and the teacher.

An `Episode` is a history (chat messages, as `deltamem.data.locomo.locomo_messages` gives them) and a
few `Query`s: a question with its gold answer, or the conversation's next message. Each query becomes
one read, encoded twice over the same target tokens:

    student:  [system] + [last W tokens of history] + prompt + target      (memory bound, read-only)
    teacher:  [system] + [the whole history]        + prompt + target      (frozen backbone, no memory)

The history is rendered message by message and written by `runtime.render.plan_writes` and
`runtime.writer.run_write`, and the question is asked as `deltamem eval` asks it (a user message,
then the generation prompt), so training, evaluation and serving share one code path. A continuation
is read as a reply is generated: its role's turn header as the prompt, its bare content (no timestamp
or speaker name) as the target.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from ..runtime.generate import PrefixCache
from ..runtime.render import Renderer, WritePass, check_messages, plan_writes
from ..runtime.session import CONTEXT_TOKENS

CONTINUATION_TOKENS = 48  # most tokens of a continuation target


@dataclass
class Query:
    """One read. `question` None: continue the conversation with `target` (a message); else a question
    answered with the text `target` (its gold answer). `window`: history tokens kept in the prompt."""

    question: str | None
    target: dict | str
    window: int = 0


@dataclass
class Episode:
    history: list[dict]
    queries: list[Query]
    source: str = "chats"


@dataclass
class Read:
    student: list[int]  # [system] + window + prompt + target
    student_start: int  # first target token in `student`
    suffix: list[int]  # prompt + target: what the teacher reads after the episode's `context`
    suffix_start: int  # first target token in `suffix`
    answer: bool  # the target is a gold answer (answer CE applies)
    windowed: bool = False  # the student's prompt holds some of the history (a window+memory read)


@dataclass
class EncodedEpisode:
    write: WritePass  # [1, T_w]: the last pass, written with gradient
    context: list[int]  # [system] + the whole written history: the teacher's prompt before each suffix
    reads: list[Read] = field(default_factory=list)
    prefix: list[WritePass] = field(default_factory=list)  # earlier passes, written without gradient


def window_ids(message_ids: list[list[int]], budget: int) -> list[int]:
    """The last whole messages that fit `budget` tokens, flattened (as `deltamem eval`'s window)."""
    out: list[list[int]] = []
    used = 0
    for ids in reversed(message_ids):
        if used + len(ids) > budget:
            break
        out.insert(0, ids)
        used += len(ids)
    return [t for ids in out for t in ids]


def encode_episode(renderer: Renderer, ep: Episode, granularity: str, max_write_tokens: int,
                   max_read_tokens: int, end_id: int, max_history_tokens: int | None = None) -> EncodedEpisode | None:
    """Encode one episode; None when nothing of it fits. The history keeps its last messages that fit
    `max_history_tokens` (default `max_write_tokens`); its last messages that fit `max_write_tokens`
    make the pass written with gradient, the earlier ones passes of at most `max_write_tokens` new
    tokens written before it without gradient (truncated backpropagation through the write, so a
    question can reach a fact said long before at the cost of a forward pass). A read longer than
    `max_read_tokens` (student side) is dropped."""
    history = check_messages(ep.history, where="episode history")
    ids = [renderer.encode(renderer.message(m)) for m in history]
    budget = max(max_history_tokens or 0, max_write_tokens)
    while len(history) > 1 and sum(map(len, ids)) > budget:
        history, ids = history[1:], ids[1:]
    split, tail = len(history), 0
    while split > 0 and tail + len(ids[split - 1]) <= max_write_tokens:
        split, tail = split - 1, tail + len(ids[split - 1])
    split = min(split, len(history) - 1)  # the gradient pass holds one message at least
    prefix, _ = plan_writes(renderer, [], history[:split], segment_tokens=max_write_tokens, context_tokens=0,
                            granularity=granularity)
    before = [t for x in ids[:split] for t in x]
    passes, _ = plan_writes(renderer, before, history[split:], segment_tokens=max_write_tokens,
                            context_tokens=CONTEXT_TOKENS, granularity=granularity)
    if len(passes) != 1:
        return None
    system = list(renderer.system_ids)
    gen = renderer.prompt([], None)[len(system):]
    full = [t for x in ids for t in x]
    reads = []
    for q in ep.queries:
        if q.question is None:
            prompt, content = renderer.reply(check_messages([q.target], "continuation")[0])
            target = (content + [end_id])[:CONTINUATION_TOKENS]
        else:
            prompt = renderer.encode(renderer.message({"role": "user", "content": q.question})) + gen
            target = renderer.encode(q.target) + [end_id]
        shown = system + window_ids(ids, q.window) + prompt
        if len(shown) + len(target) > max_read_tokens:
            continue
        reads.append(Read(shown + target, len(shown), prompt + target, len(prompt), q.question is not None,
                          len(shown) > len(system) + len(prompt)))
    return EncodedEpisode(passes[0], system + full, reads, prefix) if reads else None


def collate(rows: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad `(ids, target_start)` rows: `input_ids`, `attention_mask`, `labels` (-100 off the target)."""
    T = max(len(ids) for ids, _ in rows)
    B = len(rows)
    out = {"input_ids": torch.full((B, T), pad_id, dtype=torch.long),
           "attention_mask": torch.zeros(B, T, dtype=torch.long),
           "labels": torch.full((B, T), -100, dtype=torch.long)}
    for i, (ids, start) in enumerate(rows):
        out["input_ids"][i, : len(ids)] = torch.tensor(ids)
        out["attention_mask"][i, : len(ids)] = 1
        out["labels"][i, start: len(ids)] = torch.tensor(ids[start:])
    return out


@dataclass
class TargetPass:
    """One read pass restricted to the positions that predict a target token (`N` over the batch)."""

    logits: torch.Tensor  # [N, V] float32
    targets: torch.Tensor  # [N]
    rows: torch.Tensor  # [N] the batch row of each position
    batch_size: int

    def per_row(self, values: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of `values [N]` over each row's positions (those where `keep [N]` is True) -> `[B]`."""
        rows = self.rows if keep is None else self.rows[keep]
        values = values if keep is None else values[keep]
        n = torch.bincount(rows, minlength=self.batch_size).clamp_min(1)
        return torch.zeros(self.batch_size, device=values.device, dtype=values.dtype).index_add(0, rows, values) / n

    def first(self) -> torch.Tensor:
        """`[N]` bool: the position that predicts its row's first target token."""
        out = torch.ones_like(self.rows, dtype=torch.bool)
        out[1:] = self.rows[1:] != self.rows[:-1]
        return out


def target_pass(model, batch: dict[str, torch.Tensor], state=None) -> TargetPass:
    """Run the decoder over a read batch with `state` bound read-only (None: the bare backbone) and
    apply the LM head only where a target token is predicted."""
    from ..adapter import use_memory

    dev = next(model.parameters()).device
    ids, mask, labels = (batch[k].to(dev) for k in ("input_ids", "attention_mask", "labels"))
    ctx = use_memory(model, state, write=False) if state is not None else contextlib.nullcontext()
    with ctx:
        hidden = model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    target = labels[:, 1:]
    sel = target != -100  # [B, T-1]
    logits = model.get_output_embeddings()(hidden[:, :-1][sel]).float()  # [N, V]
    return TargetPass(logits, target[sel], sel.nonzero()[:, 0], ids.shape[0])


def grouped_pass(model, rows: list[tuple[list[int], int]], groups: list[list[int]], state, pad_id: int) -> TargetPass:
    """`target_pass` over `rows`, one batch per group of row indices (reads of like length pad less
    together) with `state`'s matching rows bound; rows in no group are left out. The result is laid
    out as one pass over all rows would be (row order, then position)."""
    parts = []
    for idx in (g for g in groups if g):
        p = target_pass(model, collate([rows[i] for i in idx], pad_id), state.rows(idx))
        parts.append((p, torch.tensor(idx, device=p.rows.device)[p.rows]))
    if not parts:
        dev = next(model.parameters()).device
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        return TargetPass(torch.zeros(0, model.get_output_embeddings().weight.shape[0], device=dev), empty, empty,
                          len(rows))
    at = torch.cat([r for _, r in parts])
    order = torch.sort(at, stable=True).indices
    return TargetPass(torch.cat([p.logits for p, _ in parts])[order], torch.cat([p.targets for p, _ in parts])[order],
                      at[order], len(rows))


def teacher_pass(model, encoded: list[EncodedEpisode], pad_id: int) -> TargetPass:
    """The frozen backbone (no memory bound) reading each episode's whole history, then each of its
    reads' suffixes: the history is prefilled once per episode (`runtime.generate.PrefixCache`) and its
    KV cache shared by the reads. Positions come in the order `target_pass` gives for the same reads."""
    dev = next(model.parameters()).device
    logits, targets, rows = [], [], []
    first = 0
    for e in encoded:
        prefix = PrefixCache(model, e.context)
        batch = collate([(r.suffix, r.suffix_start) for r in e.reads], pad_id)
        ids, labels = batch["input_ids"].to(dev), batch["labels"].to(dev)
        mask = torch.cat([torch.ones(len(e.reads), prefix.length, dtype=torch.long), batch["attention_mask"]], 1)
        out = model(input_ids=ids, attention_mask=mask.to(dev), use_cache=True,
                    **{prefix.key: prefix.expanded(len(e.reads))}).logits.float()
        # the logits before each suffix token; the first one is the prefix's last prediction
        prev = torch.cat([prefix.last_logits.to(dev).expand(len(e.reads), 1, -1), out[:, :-1]], 1)  # [Q, S, V]
        sel = labels != -100  # [Q, S]
        logits.append(prev[sel])
        targets.append(labels[sel])
        rows.append(sel.nonzero()[:, 0] + first)
        first += len(e.reads)
    return TargetPass(torch.cat(logits), torch.cat(targets), torch.cat(rows), first)
