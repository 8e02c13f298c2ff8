"""Running planned write passes: the one forward path for session writes and training episodes."""

from __future__ import annotations

import torch

from ..adapter import MemoryState, use_memory
from ..adapter.binding import MemoryBinding
from .render import WritePass


def collate_passes(passes: list[WritePass], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad one pass per batch row into `input_ids`, `attention_mask`, `write_mask`, `span_ids` `[B, T]`."""
    T = max(p.input_ids.shape[1] for p in passes)
    B = len(passes)
    out = {"input_ids": torch.full((B, T), pad_id, dtype=torch.long),
           "attention_mask": torch.zeros(B, T, dtype=torch.long),
           "write_mask": torch.zeros(B, T, dtype=torch.bool),
           "span_ids": torch.full((B, T), -1, dtype=torch.long)}
    for i, p in enumerate(passes):
        n = p.input_ids.shape[1]
        out["input_ids"][i, :n] = p.input_ids[0]
        out["attention_mask"][i, :n] = 1
        out["write_mask"][i, :n] = p.write_mask[0]
        out["span_ids"][i, :n] = p.span_ids[0]
    return out


def run_write(model, state: MemoryState, passes: list[WritePass], pad_id: int,
              collect_gates: bool = False) -> MemoryBinding:
    """Write one pass per state row (row i gets `passes[i]`) in one forward of the decoder stack
    (the LM head is skipped: a write needs no logits). Updates `state`; returns the binding."""
    if len(passes) != state.batch_size:
        raise ValueError(f"{len(passes)} write passes for a state with {state.batch_size} rows")
    dev = next(model.parameters()).device
    batch = {k: v.to(dev) for k, v in collate_passes(passes, pad_id).items()}
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    with use_memory(model, state, write=True, write_mask=batch["write_mask"], span_ids=batch["span_ids"],
                    collect_gates=collect_gates) as binding:
        decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return binding
