"""Binding a `MemoryState` to a model for the calls inside a `with use_memory(...)` block.

The binding is an explicit object held in a context variable (so threads and
async tasks never see each other's memory). Forward hooks installed by
`attach_delta_mem` consult it:

1. decoder pre-hook: records which tokens of this call are valid (the last `T`
   columns of the 2-D `attention_mask`) and checks shapes;
2. attention pre-hook: reads (and, when writing, updates) the layer's state
   from the block's input `h`, with the layer's write strategy;
3. q/k/v/o projection hooks: add `s * U m` to the projection's output.

Without an active binding the hooks do nothing and the model is the backbone.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

import torch

from .write import read_only, strategy_for

if TYPE_CHECKING:
    from .state import MemoryState

_ACTIVE: contextvars.ContextVar[tuple["MemoryBinding", ...]] = contextvars.ContextVar("deltamem_bindings", default=())


@dataclass
class MemoryBinding:
    """What the hooks need for one `use_memory` block; `state` is updated in place when writing.

    `span_ids` and `write_mask` (`[B, T]`) describe the FIRST forward call of the
    block; later calls (e.g. decode steps of `generate`) write every valid token
    in token mode and must be read-only in span modes.
    """

    key: object
    state: MemoryState
    write: bool
    span_ids: torch.Tensor | None = None
    write_mask: torch.Tensor | None = None
    collect_gates: bool = False
    calls: int = 0
    valid: torch.Tensor | None = None  # [B, T] of the current call
    call_span_ids: torch.Tensor | None = None  # span_ids / write_mask as they apply to the current call
    call_write_mask: torch.Tensor | None = None
    reads: dict = field(default_factory=dict)  # layer id -> m [B, T, H r] of the current call
    gate_tokens: list = field(default_factory=list)  # (gates [B, T, H, r], written [B, T]) per layer and call

    def gate_total(self) -> tuple[torch.Tensor, float]:
        """(sum of every written gate (differentiable), how many there are) over the block's writes."""
        total = sum((g * w[:, :, None, None]).sum() for g, w in self.gate_tokens)
        count = sum(float(w.sum()) * g.shape[2] * g.shape[3] for g, w in self.gate_tokens)
        return total, count

    def gate_mean(self) -> torch.Tensor:
        """Mean gate over every write of the block (differentiable), for the gate regulariser."""
        if not self.gate_tokens:
            return torch.zeros(())
        total, count = self.gate_total()
        return total / max(count, 1)


@contextlib.contextmanager
def use_memory(model, state, write: bool = True, span_ids: torch.Tensor | None = None,
               write_mask: torch.Tensor | None = None, collect_gates: bool = False):
    """Bind `state` to `model` for the calls inside the block; yields the `MemoryBinding`.

    Args:
        write: write the valid tokens of each call into `state` (False: read only;
            the state stays bit-identical).
        span_ids: `[B, T]` long span ids for the first call, required to write in
            "message"/"sentence" granularity (-1: token outside any span).
        write_mask: `[B, T]` bool for the first call; False marks valid tokens
            that read but do not write (e.g. a system prompt, or context already written).
        collect_gates: keep the written gates so `binding.gate_mean()` (and, per token,
            `binding.gate_tokens`) can be used in a loss.
    """
    from .model import get_delta_mem

    dm = get_delta_mem(model)
    state.check_compatible(dm)
    for name, x, dtypes in (("span_ids", span_ids, (torch.long, torch.int32)), ("write_mask", write_mask, (torch.bool,))):
        if x is not None and (not isinstance(x, torch.Tensor) or x.dim() != 2 or x.dtype not in dtypes):
            raise ValueError(f"{name} must be a [B, T] tensor of dtype {dtypes[0]}, got "
                             f"{getattr(x, 'shape', type(x).__name__)} {getattr(x, 'dtype', '')}")
    binding = MemoryBinding(dm.key, state, bool(write), span_ids, write_mask, collect_gates)
    token = _ACTIVE.set(_ACTIVE.get() + (binding,))
    try:
        yield binding
    finally:
        _ACTIVE.reset(token)


def _active(key) -> MemoryBinding | None:
    for b in reversed(_ACTIVE.get()):
        if b.key is key:
            return b
    return None


def install_hooks(decoder, dm, attns: dict) -> list:
    """Register the hooks described in the module docstring on the decoder stack `decoder` (the module
    that owns the layers and receives `input_ids` / `attention_mask`). `attns`: layer id -> (attention, {name: proj}).
    Returns the hook handles."""

    def on_model_call(module, args, kwargs):
        b = _active(dm.key)
        if b is None:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        ref = ids if ids is not None else kwargs.get("inputs_embeds")
        if ref is None:
            raise ValueError("δ-mem needs input_ids or inputs_embeds to know the call's tokens")
        B, T = ref.shape[:2]
        if B != b.state.batch_size:
            raise ValueError(f"the call has batch size {B} but the bound MemoryState has {b.state.batch_size} rows")
        am = kwargs.get("attention_mask")
        valid = am[:, -T:].to(device=ref.device, dtype=torch.bool) if isinstance(am, torch.Tensor) and am.dim() == 2 else None
        b.valid = None if valid is None or bool(valid.all()) else valid  # every token valid: layers skip the masking
        first = b.calls == 0
        b.calls += 1
        for name in ("span_ids", "write_mask"):
            x = getattr(b, name)
            if first and x is not None and tuple(x.shape) != (B, T):
                raise ValueError(f"{name} has shape {list(x.shape)} but the call's tokens are [{B}, {T}]")
        b.call_span_ids = b.span_ids.to(ref.device).long() if first and b.span_ids is not None else None
        b.call_write_mask = b.write_mask.to(ref.device) if first and b.write_mask is not None else None

    handles = [decoder.register_forward_pre_hook(on_model_call, with_kwargs=True)]

    granularity = dm.config.write_granularity
    strategy = strategy_for(granularity)
    decode_fast, mode = granularity == "token", dm.config.update_mode  # one token = one write
    for i, (attn, projs) in attns.items():
        layer = dm.layers[str(i)]
        slot = dm.layer_ids.index(i)

        def on_attention(module, args, kwargs, layer=layer, slot=slot, i=i):
            b = _active(dm.key)
            if b is None:
                return
            h = kwargs.get("hidden_states", args[0] if args else None)
            S = b.state.tensors[slot]
            if S.device != h.device:
                S = S.to(h.device)
            if not b.write:
                b.reads[i] = read_only(layer, h, S, b.valid)
                return
            one_token = h.shape[1] == 1 and b.valid is None and b.call_write_mask is None
            if decode_fast and one_token and not b.collect_gates:
                b.reads[i], b.state.tensors[slot] = layer.step(h, S, mode)  # a decode step: the fused form
                return
            if granularity != "token" and b.call_span_ids is None:
                raise ValueError(f"write_granularity={granularity!r}: writing needs span_ids for this call "
                                 "(only the first call of a use_memory block takes span_ids; use write=False after)")
            m, S_new, (gates, written) = strategy(layer, h, S, b.valid, b.call_write_mask, b.call_span_ids)
            b.reads[i] = m
            b.state.tensors[slot] = S_new
            if b.collect_gates:
                w = torch.ones(gates.shape[:2], device=gates.device) if written is None else written.float()
                b.gate_tokens.append((gates, w))

        handles.append(attn.register_forward_pre_hook(on_attention, with_kwargs=True))
        for name in dm.config.heads:
            def on_projection(module, args, output, layer=layer, name=name, i=i):
                b = _active(dm.key)
                if b is None or i not in b.reads:
                    return output
                return layer.add_correction(name, b.reads[i], output)

            handles.append(projs[name].register_forward_hook(on_projection))
    return handles
