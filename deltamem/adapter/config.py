"""`DeltaMemConfig`: every knob of a δ-mem adapter, validated on construction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

HEADS = ("q", "k", "v", "o")
GRANULARITIES = ("token", "message", "sentence")
INITS = ("base_slice", "zero")
UPDATE_MODES = ("standard", "no_decay")


@dataclass
class DeltaMemConfig:
    """Configuration of the memory attached beside every (or some) attention layer.

    Attributes:
        rank: size `r` of each state head; the state of a layer is `[H, r, r]`.
        alpha: correction scale numerator; corrections are scaled by `alpha / rank`.
        heads: which attention projections get a low-rank correction `U m_t`:
            any of "q", "k", "v", "o" (the paper's released model: q and o).
        num_state_heads: `H`, independent state heads per layer (4 = the paper's MSW variant).
        write_granularity: "token" (TSW: one write per token), "message" or
            "sentence" (SSW: one write per span from the span's mean hidden state;
            span ids must then be given to `use_memory`).
        init: "base_slice" (U starts as 0.05 x the first unit-normalised columns
            of the base projection) or "zero" (U starts at zero).
        target_layers: indices of the decoder layers to equip; None = all.
        update_mode: "standard" (decay 1 - b coupled to the write) or
            "no_decay" (plain delta rule; facts fade only where later keys overlap).
        gate_bias_init: initial gate bias `c_b`; b = sigmoid(W_b h + c_b) starts
            at sigmoid(gate_bias_init) on every row (-1.5 -> 0.18).
    """

    rank: int = 8
    alpha: float = 16.0
    heads: tuple[str, ...] = ("q", "o")
    num_state_heads: int = 1
    write_granularity: str = "token"
    init: str = "base_slice"
    target_layers: tuple[int, ...] | None = None
    update_mode: str = "standard"
    gate_bias_init: float = -1.5

    def __post_init__(self) -> None:
        if isinstance(self.heads, str):
            self.heads = (self.heads,)
        self.heads = tuple(self.heads)
        if self.target_layers is not None:
            self.target_layers = tuple(self.target_layers)
        _check(isinstance(self.rank, int) and self.rank >= 1, "rank", "a positive int", self.rank)
        _check(isinstance(self.alpha, (int, float)) and self.alpha > 0, "alpha", "a positive number", self.alpha)
        self.alpha = float(self.alpha)
        _check(len(self.heads) > 0 and all(h in HEADS for h in self.heads) and len(set(self.heads)) == len(self.heads),
               "heads", f"a non-empty tuple of distinct names from {HEADS}", self.heads)
        _check(isinstance(self.num_state_heads, int) and self.num_state_heads >= 1, "num_state_heads",
               "a positive int", self.num_state_heads)
        _check(self.write_granularity in GRANULARITIES, "write_granularity", f"one of {GRANULARITIES}",
               self.write_granularity)
        _check(self.init in INITS, "init", f"one of {INITS}", self.init)
        _check(self.update_mode in UPDATE_MODES, "update_mode", f"one of {UPDATE_MODES}", self.update_mode)
        _check(isinstance(self.gate_bias_init, (int, float)) and abs(self.gate_bias_init) < 30, "gate_bias_init",
               "a finite number in (-30, 30)", self.gate_bias_init)
        self.gate_bias_init = float(self.gate_bias_init)
        if self.target_layers is not None:
            _check(len(self.target_layers) > 0 and all(isinstance(i, int) and i >= 0 for i in self.target_layers),
                   "target_layers", "None or a non-empty list of non-negative layer indices", self.target_layers)

    @property
    def scale(self) -> float:
        """`s = alpha / rank`, the factor on every correction."""
        return self.alpha / self.rank

    @property
    def state_rows(self) -> int:
        """`H * r`: memory read width per layer."""
        return self.num_state_heads * self.rank

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["heads"] = list(self.heads)
        d["target_layers"] = None if self.target_layers is None else list(self.target_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DeltaMemConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown DeltaMemConfig field(s): {', '.join(unknown)}")
        return cls(**d)


def _check(ok: bool, name: str, expected: str, got: Any) -> None:
    if not ok:
        raise ValueError(f"DeltaMemConfig.{name} must be {expected}, got {got!r}")
