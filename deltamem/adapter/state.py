"""`MemoryState`: the whole memory of one or more users, a float32 `[B, H, r, r]` tensor per layer.

Saved as safetensors with metadata (format version, rank, heads, layers,
backbone fingerprint); round trips are bit-exact; NaN/inf is never written
and refused on load.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

FORMAT_VERSION = "1"


@dataclass
class MemoryState:
    """Per-layer states. `tensors[i]` belongs to decoder layer `layers[i]`, shape `[B, H, r, r]`."""

    tensors: list[torch.Tensor]
    layers: tuple[int, ...]
    rank: int
    num_state_heads: int
    fingerprint: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layers = tuple(int(i) for i in self.layers)
        if len(self.tensors) != len(self.layers):
            raise ValueError(f"MemoryState has {len(self.tensors)} tensors for {len(self.layers)} layers")
        shape = None
        for i, t in zip(self.layers, self.tensors):
            if t.dim() != 4 or t.shape[1:] != (self.num_state_heads, self.rank, self.rank):
                raise ValueError(f"state of layer {i} must have shape [B, {self.num_state_heads}, {self.rank}, "
                                 f"{self.rank}], got {list(t.shape)}")
            if t.dtype != torch.float32:
                raise ValueError(f"state of layer {i} must be float32, got {t.dtype}")
            if shape is not None and t.shape != shape:
                raise ValueError(f"state of layer {i} has batch size {t.shape[0]}, others {shape[0]}")
            shape = t.shape

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def zeros(cls, model: torch.nn.Module, batch_size: int = 1, device: torch.device | str | None = None) -> "MemoryState":
        """A fresh, empty memory for `batch_size` rows of `model` (which must have δ-mem attached)."""
        from .model import get_delta_mem  # local: model.py imports this module

        dm = get_delta_mem(model)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        c = dm.config
        dev = device if device is not None else next(dm.parameters()).device
        tensors = [torch.zeros(batch_size, c.num_state_heads, c.rank, c.rank, device=dev) for _ in dm.layer_ids]
        return cls(tensors, dm.layer_ids, c.rank, c.num_state_heads, dm.fingerprint)

    @property
    def batch_size(self) -> int:
        return self.tensors[0].shape[0] if self.tensors else 0

    @property
    def nbytes(self) -> int:
        """Bytes of state data (excluding file metadata)."""
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def clone(self) -> "MemoryState":
        return MemoryState([t.detach().clone() for t in self.tensors], self.layers, self.rank, self.num_state_heads,
                           self.fingerprint, dict(self.extra))

    def detach(self) -> "MemoryState":
        """The same values cut from any autograd graph (in place), e.g. between training episodes."""
        self.tensors = [t.detach() for t in self.tensors]
        return self

    def to(self, device) -> "MemoryState":
        return MemoryState([t.to(device) for t in self.tensors], self.layers, self.rank, self.num_state_heads,
                           self.fingerprint, dict(self.extra))

    def rows(self, index) -> "MemoryState":
        """The memory of some batch rows: `index` is an int, a slice or a list of ints."""
        idx = [index] if isinstance(index, int) else index
        return MemoryState([t[idx].clone() for t in self.tensors], self.layers, self.rank, self.num_state_heads,
                           self.fingerprint, dict(self.extra))

    @classmethod
    def cat(cls, states: list["MemoryState"]) -> "MemoryState":
        """Stack several memories along the batch dimension (they must share the model)."""
        if not states:
            raise ValueError("MemoryState.cat needs at least one state")
        first = states[0]
        for s in states[1:]:
            if (s.layers, s.rank, s.num_state_heads, s.fingerprint) != (first.layers, first.rank, first.num_state_heads,
                                                                         first.fingerprint):
                raise ValueError("MemoryState.cat: states come from different models or adapters")
        tensors = [torch.cat([s.tensors[i] for s in states]) for i in range(len(first.layers))]
        return cls(tensors, first.layers, first.rank, first.num_state_heads, first.fingerprint)

    def rolled(self, shift: int = 1) -> "MemoryState":
        """Row i gets row i - shift's memory: the mismatched-memory control (another episode's state)."""
        return MemoryState([t.roll(shift, 0) for t in self.tensors], self.layers, self.rank, self.num_state_heads,
                           self.fingerprint)

    def assign_rows(self, index, other: "MemoryState") -> None:
        """Write `other`'s rows into rows `index` of this state."""
        for t, o in zip(self.tensors, other.tensors):
            t[index] = o

    # ---- serialisation ------------------------------------------------------------------------
    def _check_finite(self) -> None:
        for i, t in zip(self.layers, self.tensors):
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"memory state of layer {i} contains NaN or inf; refusing to serialise it")

    def to_bytes(self) -> bytes:
        """The state as safetensors bytes (bit-exact, deterministic)."""
        self._check_finite()
        meta = {
            "format": "deltamem.memory_state",
            "format_version": FORMAT_VERSION,
            "rank": str(self.rank),
            "num_state_heads": str(self.num_state_heads),
            "layers": json.dumps(list(self.layers)),
            "fingerprint": self.fingerprint or "",
            "extra": json.dumps(self.extra, sort_keys=True),
        }
        tensors = {f"layer.{i}": t.detach().to("cpu").contiguous() for i, t in zip(self.layers, self.tensors)}
        # one metadata key: safetensors does not keep the order of several, and bytes must be deterministic
        return st_save(tensors, metadata={"deltamem": json.dumps(meta, sort_keys=True)})

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "bytes") -> "MemoryState":
        """Parse `to_bytes` output; errors name `source` and what is wrong."""
        try:
            tensors = st_load(bytes(data))
            meta = _read_metadata(data)
        except Exception as e:  # safetensors raises several types for corrupt input
            raise ValueError(f"{source}: not a valid memory state file ({e})") from None
        if meta.get("format") != "deltamem.memory_state":
            raise ValueError(f"{source}: not a deltamem memory state (format={meta.get('format')!r})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{source}: unsupported memory state format_version {meta.get('format_version')!r}")
        try:
            layers = tuple(json.loads(meta["layers"]))
            rank, heads = int(meta["rank"]), int(meta["num_state_heads"])
            extra = json.loads(meta.get("extra") or "{}")
        except (KeyError, ValueError) as e:
            raise ValueError(f"{source}: memory state metadata is incomplete or malformed ({e})") from None
        missing = [i for i in layers if f"layer.{i}" not in tensors]
        if missing or len(tensors) != len(layers):
            raise ValueError(f"{source}: memory state tensors do not match its layer list (missing {missing})")
        state = cls([tensors[f"layer.{i}"] for i in layers], layers, rank, heads, meta.get("fingerprint") or None, extra)
        try:
            state._check_finite()
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
        return state

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temp file, then rename)."""
        data = self.to_bytes()
        path = os.fspath(path)
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".state-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MemoryState":
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no memory state file at {path}")
        with open(path, "rb") as f:
            return cls.from_bytes(f.read(), source=path)

    # ---- compatibility ------------------------------------------------------------------------
    def check_compatible(self, dm) -> None:
        """Raise a ValueError naming the mismatch if this state cannot be used with adapter root `dm`."""
        c = dm.config
        if (self.rank, self.num_state_heads) != (c.rank, c.num_state_heads):
            raise ValueError(f"memory state has rank {self.rank} x {self.num_state_heads} heads, the model's adapter "
                             f"has rank {c.rank} x {c.num_state_heads} heads")
        if self.layers != dm.layer_ids:
            raise ValueError(f"memory state covers layers {list(self.layers)}, the model's adapter covers "
                             f"{list(dm.layer_ids)}")
        if self.fingerprint and dm.fingerprint and self.fingerprint != dm.fingerprint:
            raise ValueError(f"memory state was written by backbone {self.fingerprint}, this model is "
                             f"{dm.fingerprint}")


def _read_metadata(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(bytes(data[8: 8 + n]))
    return json.loads(header.get("__metadata__", {}).get("deltamem", "{}"))
