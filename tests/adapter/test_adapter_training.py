"""Training touches only δ-mem parameters; the trainable count matches DESIGN.md section 2's formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import deltamem.adapter as dm
from adapter_helpers import ARCHS, attached, tiny_model, token_ids


@pytest.mark.parametrize("arch", ARCHS)
def test_optimizer_step_changes_only_delta_mem(arch):
    """Write pass (with gradients) then a read pass on the written state; loss on the read pass only."""
    model = attached(arch)
    model.train()
    names = {n for n, _ in tiny_model(arch).named_parameters()}
    backbone_before = {n: p.detach().clone() for n, p in model.named_parameters() if n in names}
    adapter_before = {n: p.detach().clone() for n, p in model.delta_mem.named_parameters()}
    assert all(not p.requires_grad for n, p in model.named_parameters() if n in names)
    assert all(p.requires_grad for p in model.delta_mem.parameters())
    assert {id(p) for p in dm.trainable_parameters(model)} == {id(p) for p in model.parameters() if p.requires_grad}

    # every parameter goes to the optimizer, with weight decay: frozen ones must still not move
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    state = dm.MemoryState.zeros(model, batch_size=2)
    with dm.use_memory(model, state, write=True, collect_gates=True) as binding:
        model(token_ids(2, 20, seed=90))
    gate = binding.gate_mean()
    read = token_ids(2, 8, seed=91)
    with dm.use_memory(model, state, write=False):
        logits = model(read).logits
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), read[:, 1:].reshape(-1))
    loss = loss + 0.01 * (gate - 0.05) ** 2
    loss.backward()
    opt.step()

    for n, p in model.named_parameters():
        if n in names:
            assert torch.equal(p.detach(), backbone_before[n]), f"backbone parameter {n} changed"
    rows = dm.get_delta_mem(model).config.state_rows
    for n, p in model.delta_mem.named_parameters():
        before = adapter_before[n]
        parts = zip(p.detach().split(rows), before.split(rows)) if n.endswith(".W") else [(p.detach(), before)]
        for j, (now, then) in enumerate(parts):  # W_q, W_k, W_v, W_b each move
            assert not torch.equal(now, then), f"δ-mem parameter {n} (block {j}) did not change"


def test_gradient_reaches_write_pass_through_the_state():
    """The write-pass parameters W_k, W_v, W_b get gradient only via the state read later (backprop through writes)."""
    model = attached("llama")
    state = dm.MemoryState.zeros(model)
    with dm.use_memory(model, state):
        model(token_ids(1, 12, seed=92))
    with dm.use_memory(model, state, write=False):
        loss = model(token_ids(1, 6, seed=93)).logits.square().mean()
    loss.backward()
    W = model.delta_mem.layers["0"].W.grad
    for j, block in enumerate(W.split(8)):
        assert float(block.abs().max()) > 0, f"no gradient on block {j} of W"
    assert float(model.delta_mem.layers["0"].c_b.grad.abs().max()) > 0


def _independent_count(d: int, H: int, r: int, q_out: int, layers: int) -> int:
    per_layer = 4 * H * r * d + H * r + q_out * H * r + d * H * r  # W_q, W_k, W_v, W_b; c_b; U_q; U_o
    return layers * per_layer


@pytest.mark.parametrize("arch,extra,H,r", [
    ("llama", {}, 1, 8),
    ("qwen3", {"head_dim": 32}, 1, 8),  # q_proj is 4 x 32 = 128 wide, not d = 64
    ("qwen3", {"head_dim": 32}, 4, 8),
    ("mistral", {}, 2, 4),
    ("smollm3", {}, 1, 16),
])
def test_parameter_count_matches_formula(arch, extra, H, r):
    model = attached(arch, model_overrides=extra, num_state_heads=H, rank=r)
    q_out = model.model.layers[0].self_attn.q_proj.out_features
    want = _independent_count(64, H, r, q_out, 2)
    counts = dm.parameter_counts(model)
    assert counts["trainable"] == want
    assert counts["formula"] == want
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts["backbone"] == sum(p.numel() for p in tiny_model(arch, **extra).parameters())


def test_parameter_count_with_target_layers_and_all_heads():
    model = attached("qwen3", model_overrides={"head_dim": 32}, target_layers=[1], heads=("q", "k", "v", "o"))
    attn = model.model.layers[1].self_attn
    outs = [attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features, attn.o_proj.out_features]
    assert outs == [128, 64, 64, 64]
    want = 4 * 8 * 64 + 8 + sum(o * 8 for o in outs)
    assert dm.parameter_counts(model)["trainable"] == want == dm.parameter_counts(model)["formula"]
