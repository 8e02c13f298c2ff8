"""Short, stable fingerprints: of a backbone's weights (ties adapters and states to it) and of an
adapter's weights and config (ties stored sessions to the adapter that wrote them)."""

from __future__ import annotations

import hashlib

import torch

SAMPLE = 4096  # elements hashed from each end of every tensor


def backbone_fingerprint(model: torch.nn.Module) -> str:
    """Hex digest (16 chars) over the model type, every backbone tensor's name, shape and a
    deterministic sample of its values. δ-mem parameters are excluded, so attaching or
    training an adapter never changes it."""
    h = hashlib.sha256()
    h.update(str(getattr(getattr(model, "config", None), "model_type", "")).encode())
    for name, p in sorted(model.named_parameters(remove_duplicate=True), key=lambda x: x[0]):
        if "delta_mem" in name:
            continue
        flat = p.detach().reshape(-1)
        sample = flat if flat.numel() <= 2 * SAMPLE else torch.cat([flat[:SAMPLE], flat[-SAMPLE:]])
        h.update(f"{name}:{tuple(p.shape)}".encode())
        h.update(sample.to("cpu", torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]


def adapter_fingerprint(model: torch.nn.Module) -> str:
    """Hex digest (16 chars) over the δ-mem config and every δ-mem weight of `model`: a stored session
    is tied to the adapter that wrote it. Raises ValueError when no adapter is attached."""
    from .model import get_delta_mem  # model.py imports this module

    dm = get_delta_mem(model)
    h = hashlib.sha256(repr(sorted(dm.config.to_dict().items())).encode())
    for name, p in sorted(dm.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]
