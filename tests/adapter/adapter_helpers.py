"""Helpers for the adapter tests: tiny random backbones and an independent reference.

Every model is built in-process from a config (2 layers, 64 wide, vocab 128),
so nothing is downloaded. `reference_*` re-derive what the adapter should do
from DESIGN.md section 2, using only the adapter's parameters and the
sequential `delta_rule_naive`, so the tests do not trust the adapter's own
projection or write code.
"""

from __future__ import annotations

import inspect
import warnings
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.utils import logging as hf_logging

import deltamem.adapter as dm
from deltamem.ops import delta_rule_naive

VOCAB = 128
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=VOCAB, max_position_embeddings=256)
# Per-architecture extras: qwen3's default head_dim (128) would make q_proj 512 wide; smollm3's default
# special-token ids lie outside a 128-token vocabulary, and layer 1 is made a NoPE layer to cover that path.
ARCH_EXTRAS = {
    "llama": {},
    "mistral": {},
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "smollm3": {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "no_rope_layers": [1, 0]},
}
ARCHS = tuple(ARCH_EXTRAS)

hf_logging.set_verbosity_error()
warnings.filterwarnings("ignore", message=".*generation flags.*")


def cache_kw(model) -> str:
    """The forward keyword (and output field) of the KV cache: `cache` in recent transformers, else `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def step(model, ids, out=None, **kw):
    """One forward call continuing the KV cache of `out` (a previous output, or None to start one)."""
    key = cache_kw(model)
    if out is not None:
        kw[key] = getattr(out, key)
    return model(ids, use_cache=True, **kw)


def tiny_model(arch: str = "llama", seed: int = 0, **overrides) -> torch.nn.Module:
    """A fresh random float32 causal LM of family `arch`; the same (arch, seed, overrides) gives the same weights."""
    cfg = AutoConfig.for_model(arch, **{**TINY, **ARCH_EXTRAS[arch], **overrides})
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).eval().float()


def attached(arch: str = "llama", seed: int = 0, adapter_seed: int = 1, model_overrides: dict | None = None,
             **config) -> torch.nn.Module:
    """`tiny_model(arch, seed)` with δ-mem attached (adapter weights drawn from `adapter_seed`)."""
    model = tiny_model(arch, seed, **(model_overrides or {}))
    torch.manual_seed(adapter_seed)
    return dm.attach_delta_mem(model, dm.DeltaMemConfig(**config))


def token_ids(B: int, T: int, seed: int = 0, low: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, VOCAB, (B, T), generator=g)


def written_state(model, B: int = 1, T: int = 24, seed: int = 123) -> dm.MemoryState:
    """A non-zero memory: `T` random tokens per row written from a zero state (rows differ)."""
    state = dm.MemoryState.zeros(model, batch_size=B)
    with torch.no_grad(), dm.use_memory(model, state, write=True):
        model(token_ids(B, T, seed))
    assert all(t.abs().max() > 0 for t in state.tensors)
    return state


def randomize_adapter(model, seed: int = 7, scale: float = 0.05) -> None:
    """Move every δ-mem parameter away from its initialisation (so round trips test real values)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in dm.get_delta_mem(model).parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def decoder_layers(model):
    return model.model.layers


@contextmanager
def capture_attention_inputs(model):
    """Record the `hidden_states` entering every attention block (what q_proj receives), per call."""
    seen: dict[int, list[torch.Tensor]] = {}
    handles = []
    for i, layer in enumerate(decoder_layers(model)):
        def hook(module, args, kwargs, i=i):
            h = kwargs.get("hidden_states", args[0] if args else None)
            seen.setdefault(i, []).append(h.detach().clone())
        handles.append(layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def reference_project(layer, h: torch.Tensor):
    """DESIGN.md section 2 from the layer's parameters: q, k, v, b, each `[B, T, H, r]`.

    `layer.W` stacks `[W_q; W_k; W_v; W_b]`, each `H r x d`; `c_b` has `H r` entries.
    """
    H, r = layer.config.num_state_heads, layer.config.rank
    B, T, _ = h.shape
    W_q, W_k, W_v, W_b = layer.W.detach().double().split(H * r)
    x = h.detach().double()
    q = F.normalize(torch.tanh(x @ W_q.T).view(B, T, H, r), dim=-1, eps=1e-6)
    k = F.normalize(torch.tanh(x @ W_k.T).view(B, T, H, r), dim=-1, eps=1e-6)
    v = (x @ W_v.T).view(B, T, H, r)
    b = torch.sigmoid(x @ W_b.T + layer.c_b.detach().double()).view(B, T, H, r)
    return q.float(), k.float(), v.float(), b.float()


def reference_token_write(layer, h, S0, valid=None, write_mask=None):
    """Token-granularity reads and final state with the sequential reference op."""
    q, k, v, b = reference_project(layer, h)
    return delta_rule_naive(q, k, v, b, initial_state=S0, mask=valid, write_mask=write_mask,
                            mode=layer.config.update_mode)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def assert_states_close(a: dm.MemoryState, b: dm.MemoryState, tol: float) -> None:
    assert a.layers == b.layers
    for i, x, y in zip(a.layers, a.tensors, b.tensors):
        assert x.shape == y.shape, f"layer {i}: {list(x.shape)} vs {list(y.shape)}"
        d = max_diff(x, y)
        assert d <= tol, f"layer {i}: states differ by {d:.3e} (tol {tol:.0e})"


def assert_states_differ(a: dm.MemoryState, b: dm.MemoryState, min_diff: float = 1e-4) -> None:
    d = max(max_diff(x, y) for x, y in zip(a.tensors, b.tensors))
    assert d > min_diff, f"states should differ but agree to {d:.3e}"
