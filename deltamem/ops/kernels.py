"""Fused CPU kernels for a one-token δ-mem step, compiled with numba (the `fast` extra).

On a CPU decode step, δ-mem's work in a layer is a dozen tiny tensor ops (the input projection,
tanh, normalise, the gate, `S q`, `S k`, the delta-rule update, the two corrections), each
dispatched and allocated for a few hundred floats: dispatch costs more than the arithmetic.
Here the read (or read and write) of a layer is one compiled call, and each correction is added
in place into its projection's output by another.

They run only where they apply: CPU tensors in float32, nothing that needs a gradient (inside
`torch.no_grad` or `inference_mode`), and numba installed (`pip install "deltamem[fast]"`);
`arrays(...)` says so, and everywhere else the torch ops run. Both give the torch ops' values up to
float32 rounding (about 1e-7 relative): the same formulas, with dot products summed in another
order. The first call compiles the kernels (a few seconds; numba caches them on disk where the
package folder is writable).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

_KERNELS = None  # the `_numba` module once imported; False when numba is missing


def kernels():
    """The compiled kernels' module, or None when numba is not installed."""
    global _KERNELS
    if _KERNELS is None:
        try:
            from . import _numba
        except ImportError:
            _KERNELS = False
        else:
            _KERNELS = _numba
    return _KERNELS or None


@contextlib.contextmanager
def disabled():
    """Run the torch ops inside the block, as without numba (for comparisons; not thread-safe)."""
    global _KERNELS
    saved, _KERNELS = _KERNELS, False
    try:
        yield
    finally:
        _KERNELS = saved


def arrays(layer, *activations: torch.Tensor) -> dict | None:
    """The kernels' view of a `DeltaMemLayer` where they apply to it and to `activations` (CPU float32
    tensors, gradients off: `torch.no_grad` or `inference_mode`, numba installed), else None.

    The view maps "W", "c_b" and "U.<name>" to numpy arrays sharing the parameters' memory (and "scale"
    to the corrections' scale); it is made once and remade when a parameter's storage changes (`.to()`,
    a reassigned parameter), so an in-place update (an optimiser step, `load_state_dict`) is seen
    without a copy."""
    if torch.is_grad_enabled() or kernels() is None:
        return None
    for t in activations:
        if not t.is_cpu or t.dtype is not torch.float32 or t.requires_grad:
            return None
    own, low_rank = layer._parameters, layer._modules["U"]._parameters  # plain dicts: the hot path
    params = (own["W"], own["c_b"], *low_rank.values())
    key = [p.data_ptr() for p in params]
    cached = layer.__dict__.get("_kernel_arrays")
    if cached is not None and cached[0] == key:
        return cached[1]
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in params):
        return None
    view = {"W": own["W"].detach().numpy(), "c_b": own["c_b"].detach().numpy()}
    view.update({f"U.{name}": U.detach().numpy() for name, U in low_rank.items()})
    view["scale"] = np.float32(layer.config.scale)
    layer.__dict__["_kernel_arrays"] = (key, view)
    return view


def write_step(h: torch.Tensor, S: torch.Tensor, arrays: dict, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One token read then written: `h [B, d]`, `S [B, H, r, r]`, the layer's `arrays` -> `(m [B, H r],
    new state)`."""
    B, H, r, _ = S.shape
    m = np.empty((B, H * r), np.float32)
    S_new = np.empty((B, H, r, r), np.float32)
    kernels().write_step(h.numpy(), arrays["W"], arrays["c_b"], S.numpy(), mode == "standard", m, S_new)
    return torch.from_numpy(m), torch.from_numpy(S_new)


def read_step(h: torch.Tensor, S: torch.Tensor, arrays: dict) -> torch.Tensor:
    """`m = S q` for each token: `h [B, T, d]`, `S [B, H, r, r]`, the layer's `arrays` -> `m [B, T, H r]`."""
    B, T, d = h.shape
    H, r = S.shape[1], S.shape[2]
    m = np.empty((B * T, H * r), np.float32)
    kernels().read_step(h.numpy().reshape(B * T, d), arrays["W"], S.numpy(), m)
    return torch.from_numpy(m).view(B, T, H * r)


def add_lowrank_(out: torch.Tensor, m: torch.Tensor, U, scale) -> torch.Tensor:
    """`out += scale * m U^T` in place (`out [..., n]` contiguous, `m [..., k]`, `U` a `[n, k]` array and
    `scale` the float32 scalar from `arrays`); returns `out`."""
    o, k = out.numpy(), m.numpy()
    kernels().add_lowrank(o.reshape(-1, o.shape[-1]), k.reshape(-1, k.shape[-1]), U, scale)
    return out
