"""`Running`: the batch of replies being decoded, which new requests join between decode steps.

Each row keeps its own memory state (a row of the batch's `MemoryState`), its
own KV cache row, attention-mask row and next position. A request that joins
is prefilled on its own (with the others that arrived with it) by
`runtime.generate.prefill`, and its KV cache is merged into the batch's:

    columns:   0 ........................ L-1 | L
    old rows:  [pad][ earlier prompt + reply  ] | next token
    new rows:  [pad ......... ][ new prompt   ] | first token

Rows are left-padded to the longest, and padding is masked out, so a row
attends only to its own tokens; positions are per row, so rotary keys are
where a row alone would put them. A row that stops (EOS or its token limit)
leaves at once, and the padding columns no remaining row uses are cut. Only
plain `DynamicCache` layers can be merged (`mergeable`); the engine falls back to
micro-batching (join only an empty batch) for other caches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..adapter import MemoryState
from ..runtime.generate import (GenerationConfig, TextDecoder, cache_keyword, forward_with_memory, pick_next,
                                prefill)


@dataclass
class Row:
    """One reply in progress."""

    job: object  # the engine's GenJob (prompt, state, cfg, emit)
    decoder: TextDecoder
    gen: torch.Generator | None  # the row's own sampler, seeded like a batch of one
    count: int = 0  # tokens handed out
    done: bool = False

    @property
    def cfg(self) -> GenerationConfig:
        return self.job.cfg


def mergeable(cache) -> bool:
    """Whether the cache's layers are plain growing `[B, heads, T, head_dim]` tensors that can be padded,
    concatenated and sliced by row."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(l).__name__ == "DynamicLayer" and l.keys is not None for l in layers)


def _pad_left(x: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n == 0:
        return x
    shape = list(x.shape)
    shape[dim] = n
    return torch.cat([x.new_zeros(shape), x], dim=dim)


@dataclass
class Running:
    """The running batch: `rows`, their KV `cache`, `mask [B, L]`, next positions `pos [B]`, next-token
    `logits [B, V]` and memory `state` (B rows)."""

    model: object
    rows: list[Row]
    cache: object
    mask: torch.Tensor
    pos: torch.Tensor
    logits: torch.Tensor
    state: MemoryState
    key: str = field(default="")

    @classmethod
    @torch.inference_mode()
    def start(cls, model, jobs: list, tokenizer, pad_id: int) -> "Running":
        """Prefill the prompts of `jobs` as a new batch."""
        state = MemoryState.cat([j.state for j in jobs])
        pre = prefill(model, [j.prompt for j in jobs], state, pad_id)
        rows = [Row(j, TextDecoder(tokenizer), torch.Generator(device=pre.logits.device).manual_seed(j.cfg.seed)
                    if j.cfg.seed is not None else None) for j in jobs]
        return cls(model, rows, pre.cache, pre.mask, pre.pos[:, -1] + 1, pre.logits[:, -1], state,
                   cache_keyword(model))

    def join(self, other: "Running") -> None:
        """Take in `other`'s rows (a batch just prefilled): left-pad the shorter caches and concatenate."""
        La, Lb = self.mask.shape[1], other.mask.shape[1]
        L = max(La, Lb)
        for a, b in zip(self.cache.layers, other.cache.layers):
            a.keys = torch.cat([_pad_left(a.keys, L - La, 2), _pad_left(b.keys, L - Lb, 2)])
            a.values = torch.cat([_pad_left(a.values, L - La, 2), _pad_left(b.values, L - Lb, 2)])
        self.mask = torch.cat([_pad_left(self.mask, L - La, 1), _pad_left(other.mask, L - Lb, 1)])
        self.pos = torch.cat([self.pos, other.pos])
        self.logits = torch.cat([self.logits, other.logits])
        self.state = MemoryState.cat([self.state, other.state])
        self.rows += other.rows

    def pick(self) -> list[int]:
        """The next token of every row: one argmax for the greedy rows, each sampled row with its own settings
        and generator."""
        out = self.logits.argmax(-1).tolist()
        for i, r in enumerate(self.rows):
            if r.cfg.do_sample:
                out[i] = int(pick_next(self.logits[i:i + 1], r.cfg, r.gen)[0])
        return out

    def keep(self, idx: list[int]) -> None:
        """Keep only rows `idx` (in order), then cut the padding columns that no kept row uses."""
        if len(idx) != len(self.rows):
            t = torch.tensor(idx, device=self.mask.device)
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[t], layer.values[t]
            self.mask, self.pos, self.logits = self.mask[t], self.pos[t], self.logits[t]
            self.state = self.state.rows(idx)
            self.rows = [self.rows[i] for i in idx]
        first = int(self.mask.any(0).int().argmax())
        if first:
            self.mask = self.mask[:, first:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]

    @torch.inference_mode()
    def step(self, tokens: list[int]) -> None:
        """Feed each row its token: one decode forward for the whole batch."""
        dev = self.mask.device
        ids = torch.tensor(tokens, device=dev).unsqueeze(1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], dim=1)
        out = forward_with_memory(self.model, self.state, input_ids=ids, attention_mask=self.mask,
                                  position_ids=self.pos.unsqueeze(1), use_cache=True, **{self.key: self.cache})
        self.cache = getattr(out, self.key)
        self.logits = out.logits[:, -1]
        self.pos = self.pos + 1
