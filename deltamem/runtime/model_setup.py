"""Backbone + adapter in one call: what the CLI, the evaluator and the server start from."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..adapter import DeltaMemConfig, attach_delta_mem, load_adapter
from .backbone import load_backbone

SHIPPED_ADAPTER = "smollm2-135m-msw-mix"


def shipped_adapter_dir(name: str = SHIPPED_ADAPTER) -> Path | None:
    """The trained adapter shipped in the repository's `adapters/` folder, if present."""
    for root in (Path(__file__).resolve().parents[2] / "adapters", Path(__file__).resolve().parents[1] / "adapters"):
        d = root / name
        if (d / "delta_mem_config.json").exists():
            return d
    return None


def load_model(backbone: str | None = None, adapter: str | os.PathLike | None = None, progress: bool = True):
    """Load a backbone and attach an adapter. Returns `(model, tokenizer, adapter_description)`.

    `adapter=None` uses the shipped adapter when the backbone is the embedded
    default and the adapter exists; otherwise an untrained adapter is attached
    and the description says so.
    """
    model, tok = load_backbone(backbone, progress=progress)
    path = adapter if adapter is not None else (shipped_adapter_dir() if backbone is None else None)
    if path is not None:
        load_adapter(model, path)
        return model, tok, f"adapter {path}"
    with torch.random.fork_rng(devices=[]):  # same untrained adapter in every process: sessions stay loadable
        torch.manual_seed(0)
        attach_delta_mem(model, DeltaMemConfig())
    return model, tok, "UNTRAINED adapter (random init): memory reads are noise until an adapter is trained"
