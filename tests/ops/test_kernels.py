"""The fused CPU decode kernels (`ops.kernels`): the torch ops' values, used only where they apply."""

from __future__ import annotations

import pytest
import torch

from deltamem.adapter import DeltaMemConfig
from deltamem.adapter.layer import DeltaMemLayer
from deltamem.adapter.write import read_only
from deltamem.ops import kernels

pytest.importorskip("numba")


def random_layer(heads: int, mode: str = "standard", seed: int = 0) -> DeltaMemLayer:
    torch.manual_seed(seed)
    layer = DeltaMemLayer(DeltaMemConfig(num_state_heads=heads, update_mode=mode), 48, {"q": 40, "o": 48})
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
    return layer


def decode_once(layer, h, S, out):
    """The three calls a decode step makes on a layer: the write step, a read, both corrections."""
    m, S_new = layer.step(h, S, layer.config.update_mode)
    read = read_only(layer, h, S, None)
    return m, S_new, read, layer.add_correction("q", read, out[:, :, :40].clone()), layer.add_correction("o", m, out.clone())


@pytest.mark.parametrize("heads", [1, 4])
@pytest.mark.parametrize("mode", ["standard", "no_decay"])
@pytest.mark.parametrize("B", [1, 3])
def test_fused_decode_step_matches_the_torch_ops(heads, mode, B):
    layer = random_layer(heads, mode)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(B, 1, 48, generator=g)
    S = 0.3 * torch.randn(B, heads, 8, 8, generator=g)
    out = torch.randn(B, 1, 48, generator=g)
    with torch.inference_mode():
        assert kernels.arrays(layer, h, S) is not None  # the fused path runs below
        fused = decode_once(layer, h, S, out)
        with kernels.disabled():
            assert kernels.arrays(layer, h, S) is None
            plain = decode_once(layer, h, S, out)
        assert kernels.arrays(layer, h, S) is not None
    for a, b in zip(fused, plain):
        assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.equal(fused[1], S)  # the step wrote


def test_kernels_apply_only_to_cpu_float32_inference():
    layer = random_layer(2)
    h, S = torch.randn(1, 1, 48), torch.zeros(1, 2, 8, 8)
    assert kernels.arrays(layer, h, S) is None  # gradients on: training takes the torch ops
    with torch.no_grad():
        assert kernels.arrays(layer, h, S) is not None
        assert kernels.arrays(layer, h.double(), S) is None
        assert kernels.arrays(layer.double(), h, S) is None


def test_kernels_see_in_place_updates_and_new_parameters():
    layer = random_layer(2)
    h, S = torch.randn(2, 1, 48), 0.3 * torch.randn(2, 2, 8, 8)
    out = torch.randn(2, 1, 48)
    with torch.no_grad():
        before = decode_once(layer, h, S, out)
        layer.W.mul_(0.5)  # in place, as an optimiser step or load_state_dict does
        layer.U["o"] = torch.nn.Parameter(torch.randn(48, 16))  # a new parameter object
        after = decode_once(layer, h, S, out)
        with kernels.disabled():
            plain = decode_once(layer, h, S, out)
    assert not torch.allclose(before[0], after[0])
    for a, b in zip(after, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_training_gradients_take_the_torch_ops():
    layer = random_layer(2)
    h = torch.randn(1, 1, 48, requires_grad=True)
    m, S_new = layer.step(h, torch.zeros(1, 2, 8, 8), "standard")
    (m.sum() + S_new.sum()).backward()
    assert layer.W.grad is not None and h.grad is not None


def test_a_state_that_needs_gradients_takes_the_torch_ops():
    layer = random_layer(2)
    S = torch.zeros(1, 2, 8, 8, requires_grad=True)  # e.g. written in a training step, read under no_grad
    with torch.no_grad():
        assert kernels.arrays(layer, torch.randn(1, 1, 48), S) is None
        m, _ = layer.step(torch.randn(1, 1, 48), S, "standard")
    assert m.shape == (1, 1, 16)
