"""Token generation with a bound memory: greedy or sampled, streaming, batched rows.

The memory is read-only while generating (`use_memory(write=False)`): a reply
is written afterwards, as a message, like any other.

One path for every caller: `prefill` runs the prompt rows (left-padded, after an
optional `PrefixCache` shared by all rows), `decode` is the decoding loop, and
`generate_tokens` is the two together. Sessions generate from whole prompts;
`deltamem eval` prefills a conversation's shared prefix once, answers after it
and teacher-forces gold answers through `prefill(..., keep=K)`. A caller with a
loop of its own builds it from the same steps: `forward_with_memory` (one model
call, memory bound for that call) and `pick_next` (argmax or sampling).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..adapter import MemoryState, use_memory
from ..adapter.model import get_delta_mem


@dataclass
class GenerationConfig:
    """Decoding options. Greedy unless `do_sample`."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        def is_int(x):
            return isinstance(x, int) and not isinstance(x, bool)

        def is_num(x):
            return isinstance(x, (int, float)) and not isinstance(x, bool)

        if not is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {self.max_new_tokens!r}")
        if not is_num(self.temperature) or not 0 < self.temperature < float("inf"):  # also refuses NaN
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if not is_num(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0, got {self.top_k!r}")
        if self.seed is not None and not is_int(self.seed):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}")


def stop_ids(model, tokenizer) -> set[int]:
    """Token ids that end a reply: the generation config's EOS ids and the tokenizer's EOS."""
    ids = set()
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def pick_next(logits: torch.Tensor, cfg: GenerationConfig, gen: torch.Generator | None) -> torch.Tensor:
    """`logits [B, V]` -> next ids `[B]`: argmax, or a sample (temperature, top-k, top-p) drawn with `gen`."""
    if not cfg.do_sample:
        return logits.argmax(-1)
    logits = logits.float() / cfg.temperature
    if cfg.top_k:
        kth = logits.topk(min(cfg.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > cfg.top_p  # keep the smallest set reaching top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(-1)


def cache_keyword(model) -> str:
    """The forward keyword (and output field) of the KV cache: `cache` in recent transformers, else
    `past_key_values` (deprecated there)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _keep(model, k: int | None) -> dict:
    """`logits_to_keep=k` where the model takes it (the LM head then runs on the last k positions only)."""
    if k is None or "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return {}
    return {"logits_to_keep": k}


def forward_with_memory(model, state: MemoryState | None, **kw):
    """`model(**kw)` with `state` bound read-only for this call only (None: the bare backbone)."""
    if state is None:
        return model(**kw)
    with use_memory(model, state, write=False):  # bound per call: nothing stays bound while a stream waits
        return model(**kw)


class PrefixCache:
    """The KV cache of `prefix_ids` (one row), computed once with `state` (one row) bound read-only when
    given. Rows given to `prefill` / `generate_tokens(prefix=...)` continue it, so prompts that share
    a beginning (system prompt, a history window) compute it once."""

    @torch.inference_mode()
    def __init__(self, model, prefix_ids: list[int], state: MemoryState | None = None):
        if not prefix_ids:
            raise ValueError("the shared prefix is empty (it holds at least the system prompt)")
        if state is not None and state.batch_size != 1:
            raise ValueError(f"a shared prefix is one row; its state has {state.batch_size}")
        self.model, self.state, self.length = model, state, len(prefix_ids)
        self.key = cache_keyword(model)
        dev = next(model.parameters()).device
        out = forward_with_memory(model, state, input_ids=torch.tensor([prefix_ids], device=dev), use_cache=True,
                                  **_keep(model, 1))
        self.cache = getattr(out, self.key)
        self.last_logits = out.logits[:, -1].float()  # [1, V]: the prediction of whatever follows the prefix

    def expanded(self, rows: int):
        """A copy of the cache repeated for `rows` rows (the cache itself stays reusable)."""
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(rows)
        return cache


@dataclass
class Prefill:
    """A batch after its prompt rows were run: what `decode` continues from."""

    logits: torch.Tensor  # [B, K, V] logits of the last K row positions (K = `keep`, or all T)
    cache: object  # KV cache of prefix + rows
    mask: torch.Tensor  # [B, P + T] attention mask, 0 on padding
    pos: torch.Tensor  # [B, T] position ids of the row tokens


@torch.inference_mode()
def prefill(model, rows: list[list[int]], state: MemoryState | None, pad_id: int,
            prefix: PrefixCache | None = None, keep: int | None = 1) -> Prefill:
    """Run token rows, left-padded into one batch (after `prefix` when given), with `state` bound read-only.

    `state` has one row per row, or is None for the bare backbone; after a
    `prefix` computed with a memory, it is that memory repeated per row.
    `keep`: how many last positions' logits to return (None: all T). Positions
    count on from the prefix; padding is masked out.
    """
    empty = [i for i, r in enumerate(rows) if not r]
    if empty:
        raise ValueError(f"prompt {empty[0]} is empty")
    if prefix is not None and (prefix.state is None) != (state is None):
        raise ValueError("rows after a shared prefix need the memory the prefix was computed with (none if it "
                         "had none)")
    B, dev = len(rows), next(model.parameters()).device
    P = prefix.length if prefix is not None else 0
    T = max(len(r) for r in rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long, device=dev)
    mask = torch.zeros(B, P + T, dtype=torch.long, device=dev)
    mask[:, :P] = 1
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = torch.tensor(r, device=dev)
        mask[i, P + T - len(r):] = 1
    pos = (mask.cumsum(-1) - 1)[:, P:].clamp_min(P)  # padding (masked out) takes any position
    key = cache_keyword(model)
    past = {key: prefix.expanded(B)} if prefix is not None else {}
    out = forward_with_memory(model, state, input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                              **past, **_keep(model, keep))
    return Prefill(out.logits, getattr(out, key), mask, pos)


@torch.inference_mode()
def decode(model, start: Prefill, state: MemoryState | None, cfg: GenerationConfig,
           stop: set[int]) -> Iterator[list[int | None]]:
    """The decoding loop: yield, at each step, the new token of every row (None once a row has stopped),
    continuing from `start` (the prompt's logits and KV cache) with `state` bound read-only."""
    mask, pos, cache, logits = start.mask, start.pos, start.cache, start.logits[:, -1]
    B, dev = mask.shape[0], mask.device
    gen = torch.Generator(device=dev).manual_seed(cfg.seed) if cfg.seed is not None else None  # multinomial's device
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    key = cache_keyword(model)
    for step in range(cfg.max_new_tokens):
        nxt = pick_next(logits, cfg, gen).to(dev)
        stopped = done | torch.tensor([int(t) in stop for t in nxt.tolist()], device=dev)
        yield [None if stopped[i] else int(nxt[i]) for i in range(B)]
        done = stopped
        if bool(done.all()) or step == cfg.max_new_tokens - 1:  # no forward for a token never used
            return
        mask = torch.cat([mask, (~done).long().unsqueeze(1)], dim=1)
        pos = pos[:, -1:] + 1
        out = forward_with_memory(model, state, input_ids=nxt.unsqueeze(1), attention_mask=mask, position_ids=pos,
                                  use_cache=True, **{key: cache})
        cache = getattr(out, key)
        logits = out.logits[:, -1]


def generate_tokens(model, prompts: list[list[int]], state: MemoryState | None, cfg: GenerationConfig,
                    stop: set[int], pad_id: int, prefix: PrefixCache | None = None) -> Iterator[list[int | None]]:
    """Yield, at each step, the new token of every row (None once a row has stopped).

    `prompts` are token id lists (left-padded into one batch); `state` has one
    row per prompt, or is None for the bare backbone. With `prefix`, every
    prompt continues that shared prefix (its KV cache is copied, not recomputed)
    and `state` is the prefix's memory repeated per prompt.
    """
    if not prompts:
        return
    yield from decode(model, prefill(model, prompts, state, pad_id, prefix), state, cfg, stop)



class TextDecoder:
    """Incremental detokenisation of one row: `push(token)` returns the new text, whole characters only
    (an incomplete multi-byte character waits for the rest); `finish()` returns what is left."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.sent = tokenizer, [], ""

    def _new(self, partial_ok: bool) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if (not partial_ok and text.endswith("\ufffd")) or len(text) <= len(self.sent):
            return ""
        new, self.sent = text[len(self.sent):], text
        return new

    def push(self, token: int) -> str:
        self.ids.append(token)
        return self._new(partial_ok=False)

    def finish(self) -> str:
        return self._new(partial_ok=True)


def stream_text(tokenizer, token_stream: Iterator[list[int | None]]) -> Iterator[str]:
    """Turn a single-row token stream into text pieces (whole characters only). A reply starts at its
    first visible character: a memory recalls a value as written inside a sentence (" Mochi"), so the
    first token may carry the space that preceded it there."""
    dec = TextDecoder(tokenizer)

    def pieces() -> Iterator[str]:
        for step in token_stream:
            if step[0] is None:
                break
            yield dec.push(step[0])
        yield dec.finish()

    started = False
    for piece in pieces():
        if not started:
            piece = piece.lstrip()
            started = bool(piece)
        if piece:
            yield piece


def kv_cache_bytes(model, tokens: int, bytes_per_value: int | None = None) -> int:
    """Bytes of KV cache the backbone needs to hold `tokens` tokens of context."""
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    if bytes_per_value is None:
        bytes_per_value = next(model.parameters()).element_size()
    return 2 * c.num_hidden_layers * kv_heads * head_dim * tokens * bytes_per_value


def has_memory(model) -> bool:
    try:
        get_delta_mem(model)
        return True
    except ValueError:
        return False
