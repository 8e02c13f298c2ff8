"""Every refusal is a ValueError that names what is wrong."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save, save_file
from transformers import AutoConfig, AutoModelForCausalLM

import deltamem.adapter as dm
from adapter_helpers import attached, randomize_adapter, tiny_model, token_ids, written_state


# --------------------------------------------------------------------------- attaching


def test_unsupported_model_type_gpt2():
    cfg = AutoConfig.for_model("gpt2", n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=64)
    model = AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(ValueError, match="'gpt2'"):
        dm.attach_delta_mem(model)
    assert not hasattr(model, "delta_mem")
    assert all(p.requires_grad for p in model.parameters())  # refused before freezing anything


def test_unsupported_packed_qkv_model_phi3():
    cfg = AutoConfig.for_model("phi3", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                               max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    with pytest.raises(ValueError, match="'phi3'"):
        dm.attach_delta_mem(AutoModelForCausalLM.from_config(cfg))


def test_attaching_twice():
    model = attached("llama")
    with pytest.raises(ValueError, match="already"):
        dm.attach_delta_mem(model)


def test_attach_needs_a_config_object():
    with pytest.raises(ValueError, match="DeltaMemConfig"):
        dm.attach_delta_mem(tiny_model("llama"), {"rank": 8})


def test_target_layer_out_of_range():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="target_layers"):
        dm.attach_delta_mem(model, dm.DeltaMemConfig(target_layers=[0, 5]))
    assert not hasattr(model, "delta_mem")


@pytest.mark.parametrize("field,value", [
    ("rank", 0), ("rank", 2.5), ("alpha", 0), ("alpha", -1.0), ("heads", ()), ("heads", ("q", "x")),
    ("heads", ("q", "q")), ("num_state_heads", 0), ("write_granularity", "word"), ("init", "normal"),
    ("target_layers", [-1]), ("target_layers", []), ("update_mode", "decay"), ("gate_bias_init", math.nan),
    ("gate_bias_init", 100.0),
])
def test_bad_config_field_is_named(field, value):
    with pytest.raises(ValueError, match=f"DeltaMemConfig.{field}"):
        dm.DeltaMemConfig(**{field: value})


def test_unknown_config_field_in_dict():
    with pytest.raises(ValueError, match="ranks"):
        dm.DeltaMemConfig.from_dict({"ranks": 8})
    assert dm.DeltaMemConfig.from_dict(dm.DeltaMemConfig(rank=4).to_dict()) == dm.DeltaMemConfig(rank=4)


def test_use_memory_without_adapter():
    with pytest.raises(ValueError, match="no δ-mem adapter"):
        with dm.use_memory(tiny_model("llama"), None):
            pass


# --------------------------------------------------------------------------- loading adapters


@pytest.fixture
def saved(tmp_path):
    model = attached("llama")
    randomize_adapter(model)
    dm.save_adapter(model, tmp_path / "ad")
    return tmp_path / "ad"


def test_load_onto_different_hidden_size(saved):
    with pytest.raises(ValueError, match="hidden_size"):
        dm.load_adapter(tiny_model("llama", hidden_size=32, num_attention_heads=2, num_key_value_heads=1), saved)


def test_load_onto_different_model_type(saved):
    with pytest.raises(ValueError, match="model_type"):
        dm.load_adapter(tiny_model("mistral"), saved)


def test_load_onto_different_layer_count(saved):
    with pytest.raises(ValueError, match="num_hidden_layers"):
        dm.load_adapter(tiny_model("llama", num_hidden_layers=3), saved)


def test_load_onto_different_weights(saved):
    other = tiny_model("llama", seed=3)
    with pytest.raises(ValueError, match="fingerprint|weights"):
        dm.load_adapter(other, saved)


def test_load_with_different_config_attached(saved):
    model = attached("llama", rank=4)
    with pytest.raises(ValueError, match="different config"):
        dm.load_adapter(model, saved)


def _rewrite_weights(directory, edit):
    path = directory / "adapter_model.safetensors"
    weights = load_file(path)
    edit(weights)
    save_file(weights, path, metadata={"format": "deltamem.adapter"})


def test_load_with_missing_key(saved):
    _rewrite_weights(saved, lambda w: w.pop("layers.1.U.o"))
    with pytest.raises(ValueError, match=r"missing keys \['1.U.o'\]"):
        dm.load_adapter(tiny_model("llama"), saved)


def test_load_with_unexpected_key(saved):
    _rewrite_weights(saved, lambda w: w.__setitem__("layers.1.U.k", torch.zeros(32, 8)))
    with pytest.raises(ValueError, match=r"unexpected keys \['1.U.k'\]"):
        dm.load_adapter(tiny_model("llama"), saved)


def test_load_with_misshapen_weight(saved):
    _rewrite_weights(saved, lambda w: w.__setitem__("layers.0.c_b", torch.zeros(9)))
    with pytest.raises(ValueError, match="0.c_b"):
        dm.load_adapter(tiny_model("llama"), saved)


def test_load_with_malformed_config(saved):
    (saved / "delta_mem_config.json").write_text('{"config": {"rank": 8}')
    with pytest.raises(ValueError, match="malformed"):
        dm.load_adapter(tiny_model("llama"), saved)


def test_load_from_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        dm.load_adapter(tiny_model("llama"), tmp_path / "nothing")


# --------------------------------------------------------------------------- states in use_memory


@pytest.mark.parametrize("kw, what", [({"rank": 4}, "rank"), ({"num_state_heads": 2}, "heads"),
                                      ({"target_layers": [0]}, "layers")])
def test_state_with_other_shape(kw, what):
    model = attached("llama")
    other = dm.MemoryState.zeros(attached("llama", **kw))
    with pytest.raises(ValueError, match=what):
        with dm.use_memory(model, other):
            pass


def test_state_from_other_backbone():
    model = attached("llama")
    other = written_state(attached("llama", seed=4))
    with pytest.raises(ValueError, match="backbone"):
        with dm.use_memory(model, other):
            pass


def test_batch_size_mismatch():
    model = attached("llama")
    state = dm.MemoryState.zeros(model, batch_size=2)
    before = state.to_bytes()
    with pytest.raises(ValueError, match="batch size 3"), torch.no_grad(), dm.use_memory(model, state):
        model(token_ids(3, 5))
    assert state.to_bytes() == before


def test_write_mask_shape_mismatch():
    model = attached("llama")
    with pytest.raises(ValueError, match="write_mask"), torch.no_grad(), dm.use_memory(
            model, dm.MemoryState.zeros(model), write_mask=torch.ones(1, 4, dtype=torch.bool)):
        model(token_ids(1, 5))
    with pytest.raises(ValueError, match="write_mask"):
        with dm.use_memory(model, dm.MemoryState.zeros(model), write_mask=torch.ones(1, 5)):
            pass


def test_span_mode_without_span_ids():
    model = attached("qwen2", write_granularity="sentence")
    with pytest.raises(ValueError, match="span_ids"), torch.no_grad(), dm.use_memory(model, dm.MemoryState.zeros(model)):
        model(token_ids(1, 5))


def test_zeros_needs_positive_batch():
    model = attached("llama")
    with pytest.raises(ValueError, match="batch_size"):
        dm.MemoryState.zeros(model, batch_size=0)


def test_state_constructor_checks_shape_and_dtype():
    with pytest.raises(ValueError, match="shape"):
        dm.MemoryState([torch.zeros(1, 1, 8, 4)], (0,), 8, 1)
    with pytest.raises(ValueError, match="float32"):
        dm.MemoryState([torch.zeros(1, 1, 8, 8, dtype=torch.float64)], (0,), 8, 1)
    with pytest.raises(ValueError, match="tensors for"):
        dm.MemoryState([torch.zeros(1, 1, 8, 8)], (0, 1), 8, 1)


# --------------------------------------------------------------------------- NaN and corrupt state files


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_state_is_not_serialised(bad, tmp_path):
    model = attached("llama")
    state = written_state(model)
    state.tensors[1][0, 0, 2, 5] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        state.to_bytes()
    with pytest.raises(ValueError, match="NaN or inf"):
        state.save(tmp_path / "s.safetensors")
    assert list(tmp_path.iterdir()) == []


def _metadata(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n])["__metadata__"]


def _crafted(state, edit_tensors=None, edit_meta=None) -> bytes:
    """A file with `state`'s own metadata but edited tensors or metadata (bypassing the writer's checks)."""
    meta = _metadata(state.to_bytes())
    tensors = {f"layer.{i}": t.clone() for i, t in zip(state.layers, state.tensors)}
    if edit_tensors:
        edit_tensors(tensors)
    if edit_meta:
        inner = json.loads(meta["deltamem"])
        edit_meta(inner)
        meta = {"deltamem": json.dumps(inner)}
    return save(tensors, metadata=meta)


def test_nan_state_file_is_refused_on_load(tmp_path):
    state = written_state(attached("llama"))
    data = _crafted(state, edit_tensors=lambda t: t["layer.1"].__setitem__((0, 0, 0, 0), math.nan))
    with pytest.raises(ValueError, match="NaN or inf"):
        dm.MemoryState.from_bytes(data)
    path = tmp_path / "nan.safetensors"
    path.write_bytes(data)
    with pytest.raises(ValueError, match="nan.safetensors"):
        dm.MemoryState.load(path)


@pytest.mark.parametrize("how", ["empty", "garbage", "truncated", "huge-header", "flipped-header"])
def test_corrupt_state_bytes(how):
    data = written_state(attached("llama")).to_bytes()
    corrupt = {
        "empty": b"",
        "garbage": b"\x00\x01 not a state file at all \xff" * 4,
        "truncated": data[: len(data) - 17],
        "huge-header": (2 ** 40).to_bytes(8, "little") + data[8:],
        "flipped-header": data[:8] + b"}" + data[9:],
    }[how]
    with pytest.raises(ValueError, match="not a valid memory state"):
        dm.MemoryState.from_bytes(corrupt)


def test_state_file_with_wrong_format_metadata():
    state = written_state(attached("llama"))
    plain = save({"layer.0": state.tensors[0]})
    with pytest.raises(ValueError, match="not a deltamem memory state"):
        dm.MemoryState.from_bytes(plain)
    newer = _crafted(state, edit_meta=lambda m: m.__setitem__("format_version", "99"))
    with pytest.raises(ValueError, match="format_version"):
        dm.MemoryState.from_bytes(newer)
    no_layers = _crafted(state, edit_meta=lambda m: m.pop("layers"))
    with pytest.raises(ValueError, match="malformed|incomplete"):
        dm.MemoryState.from_bytes(no_layers)


def test_state_file_with_missing_layer_tensor():
    state = written_state(attached("llama"))
    data = _crafted(state, edit_tensors=lambda t: t.pop("layer.1"))
    with pytest.raises(ValueError, match="missing"):
        dm.MemoryState.from_bytes(data)


def test_state_file_with_wrong_tensor_shape():
    state = written_state(attached("llama"))
    data = _crafted(state, edit_tensors=lambda t: t.__setitem__("layer.0", torch.zeros(1, 1, 4, 4)))
    with pytest.raises(ValueError, match="shape"):
        dm.MemoryState.from_bytes(data)


def test_cat_refuses_states_of_different_models():
    a = dm.MemoryState.zeros(attached("llama"))
    b = dm.MemoryState.zeros(attached("llama", rank=4))
    with pytest.raises(ValueError, match="different models"):
        dm.MemoryState.cat([a, b])
    with pytest.raises(ValueError, match="at least one"):
        dm.MemoryState.cat([])


def test_failed_load_leaves_the_model_without_adapter(saved):
    _rewrite_weights(saved, lambda w: w.pop("layers.1.U.o"))
    model = tiny_model("llama")
    ids = torch.randint(0, 128, (1, 8))
    with torch.no_grad():
        before = model(ids).logits
    with pytest.raises(ValueError, match="missing keys"):
        dm.load_adapter(model, saved)
    assert not hasattr(model, "delta_mem")
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)  # no hook left behind
    dm.attach_delta_mem(model, dm.DeltaMemConfig())  # and it can be attached again


def test_load_onto_different_weights_does_not_attach(saved):
    other = tiny_model("llama", seed=3)
    with pytest.raises(ValueError, match="weights"):
        dm.load_adapter(other, saved)
    assert not hasattr(other, "delta_mem")
