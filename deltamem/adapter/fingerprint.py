"""A short, stable fingerprint of a backbone's weights, to tie adapters and states to it."""

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
