"""Saving and loading: adapters (JSON config + safetensors) and memory states (bit-exact, deterministic)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

import deltamem.adapter as dm
from adapter_helpers import ARCHS, attached, randomize_adapter, tiny_model, token_ids, written_state


@pytest.mark.parametrize("arch", ARCHS)
def test_adapter_round_trip_gives_identical_logits(arch, tmp_path):
    model = attached(arch, rank=4, num_state_heads=2, gate_bias_init=-2.5, update_mode="no_decay")
    randomize_adapter(model)
    state = written_state(model, B=2)
    query = token_ids(2, 9, seed=80)
    with torch.no_grad(), dm.use_memory(model, state.clone(), write=False):
        want = model(query).logits
    dm.save_adapter(model, tmp_path / "ad")
    assert sorted(os.listdir(tmp_path / "ad")) == ["adapter_model.safetensors", "delta_mem_config.json"]
    loaded = dm.load_adapter(tiny_model(arch), tmp_path / "ad")
    assert dm.get_delta_mem(loaded).config == dm.get_delta_mem(model).config
    with torch.no_grad(), dm.use_memory(loaded, dm.MemoryState.from_bytes(state.to_bytes()), write=False):
        got = loaded(query).logits
    assert torch.equal(got, want)
    for (n1, p1), (n2, p2) in zip(model.delta_mem.named_parameters(), loaded.delta_mem.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    # writes continue identically too
    s1, s2 = state.clone(), state.clone()
    with torch.no_grad(), dm.use_memory(model, s1):
        model(query)
    with torch.no_grad(), dm.use_memory(loaded, s2):
        loaded(query)
    assert s1.to_bytes() == s2.to_bytes()


def test_adapter_file_holds_only_delta_mem_weights(tmp_path):
    model = attached("llama")
    dm.save_adapter(model, tmp_path)
    weights = load_file(tmp_path / "adapter_model.safetensors")
    assert sum(t.numel() for t in weights.values()) == dm.parameter_counts(model)["trainable"]
    meta = json.loads((tmp_path / "delta_mem_config.json").read_text())
    assert meta["config"] == dm.get_delta_mem(model).config.to_dict()
    assert meta["backbone"]["fingerprint"] == dm.backbone_fingerprint(tiny_model("llama"))
    config, backbone = dm.read_adapter_config(tmp_path)
    assert config == dm.get_delta_mem(model).config and backbone["model_type"] == "llama"


def test_load_adapter_onto_model_with_same_config_replaces_weights(tmp_path):
    src = attached("llama")
    randomize_adapter(src)
    dm.save_adapter(src, tmp_path)
    dst = attached("llama", adapter_seed=99)
    assert not torch.equal(dst.delta_mem.layers["0"].W, src.delta_mem.layers["0"].W)
    assert dm.load_adapter(dst, tmp_path) is dst
    for p1, p2 in zip(src.delta_mem.parameters(), dst.delta_mem.parameters()):
        assert torch.equal(p1, p2)


def test_load_adapter_check_backbone_false_loads_onto_other_weights(tmp_path):
    src = attached("llama")
    randomize_adapter(src)
    dm.save_adapter(src, tmp_path)
    other = dm.load_adapter(tiny_model("llama", seed=5), tmp_path, check_backbone=False)
    assert torch.equal(other.delta_mem.layers["1"].U["o"], src.delta_mem.layers["1"].U["o"])


def test_fingerprint_is_stable_and_ignores_the_adapter():
    a, b = tiny_model("llama"), tiny_model("llama")
    fp = dm.backbone_fingerprint(a)
    assert fp == dm.backbone_fingerprint(b)
    assert fp != dm.backbone_fingerprint(tiny_model("llama", seed=1))
    assert fp != dm.backbone_fingerprint(tiny_model("mistral"))
    dm.attach_delta_mem(a)
    randomize_adapter(a)
    assert dm.backbone_fingerprint(a) == fp == dm.get_delta_mem(a).fingerprint


def test_adapter_fingerprint_tracks_the_adapter_weights_and_config(tmp_path):
    a = attached("llama", rank=4)
    fp = dm.adapter_fingerprint(a)
    assert fp == dm.adapter_fingerprint(attached("llama", rank=4)) and len(fp) == 16
    assert fp != dm.adapter_fingerprint(attached("llama", rank=8))
    randomize_adapter(a)
    changed = dm.adapter_fingerprint(a)
    assert changed != fp
    dm.save_adapter(a, tmp_path)  # a saved and reloaded adapter keeps its fingerprint
    assert dm.adapter_fingerprint(dm.load_adapter(tiny_model("llama"), tmp_path)) == changed
    with pytest.raises(ValueError):
        dm.adapter_fingerprint(tiny_model("llama"))


# --------------------------------------------------------------------------- memory states


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def test_state_save_load_is_bit_exact(tmp_path):
    model = attached("llama", num_state_heads=2)
    state = written_state(model, B=3)
    state.extra = {"user": "alice", "turns": 3}
    path = tmp_path / "sub" / "state.safetensors"
    state.save(path)
    back = dm.MemoryState.load(path)
    assert (back.layers, back.rank, back.num_state_heads, back.fingerprint, back.extra) == (
        state.layers, state.rank, state.num_state_heads, state.fingerprint, state.extra)
    for a, b in zip(state.tensors, back.tensors):
        assert a.dtype == b.dtype == torch.float32 and torch.equal(_bits(a), _bits(b))
    assert path.read_bytes() == state.to_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["state.safetensors"]  # no temp file left behind


def test_state_bytes_are_deterministic_and_bit_exact():
    model = attached("llama")
    state = written_state(model, B=2)
    data = state.to_bytes()
    assert data == state.to_bytes() == state.clone().to_bytes()
    rebuilt = dm.MemoryState([t.clone() for t in state.tensors], state.layers, state.rank, state.num_state_heads,
                             state.fingerprint)
    assert rebuilt.to_bytes() == data
    back = dm.MemoryState.from_bytes(data)
    assert back.to_bytes() == data
    for a, b in zip(state.tensors, back.tensors):
        assert torch.equal(_bits(a), _bits(b))
    # -0.0 and denormals survive too (bit-exact, not just equal)
    state.tensors[0][0, 0, 0, 0] = -0.0
    state.tensors[0][0, 0, 0, 1] = 1e-42
    back = dm.MemoryState.from_bytes(state.to_bytes())
    assert torch.equal(_bits(back.tensors[0]), _bits(state.tensors[0]))
    # different values give different bytes
    state.tensors[1][1, 0, 3, 3] += 1e-3
    assert state.to_bytes() != data


def test_state_is_small():
    """DESIGN.md section 4.5: a few KB; 2 layers x 64 floats x 4 B per row, plus a small header."""
    model = attached("llama")
    state = dm.MemoryState.zeros(model)
    assert state.nbytes == 2 * 64 * 4
    assert len(state.to_bytes()) < state.nbytes + 1024


def test_state_rows_cat_and_assign():
    model = attached("llama")
    state = written_state(model, B=3)
    parts = [state.rows(i) for i in range(3)]
    assert all(p.batch_size == 1 for p in parts)
    assert dm.MemoryState.cat(parts).to_bytes() == state.to_bytes()
    fresh = dm.MemoryState.zeros(model, batch_size=3)
    fresh.assign_rows(1, parts[1])
    assert torch.equal(fresh.tensors[0][1], state.tensors[0][1]) and float(fresh.tensors[0][0].abs().max()) == 0
