"""Attach δ-mem to a Hugging Face causal LM, freeze the backbone, save and load adapters.

Which modules are wrapped is decided by the model's `config.model_type`
(`ARCHITECTURES`); δ-mem parameters live in one `model.delta_mem` module and
reach the backbone only through forward hooks, so the backbone's own
parameter names and values never change.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from .binding import install_hooks
from .config import DeltaMemConfig
from .fingerprint import backbone_fingerprint
from .layer import DeltaMemLayer

CONFIG_NAME = "delta_mem_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class AttentionLayout:
    """Where a model family keeps its decoder layers and attention projections."""

    layers: str = "model.layers"
    attention: str = "self_attn"
    projections: tuple[tuple[str, str], ...] = (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj"))


_SEPARATE_QKV = AttentionLayout()
ARCHITECTURES: dict[str, AttentionLayout] = {
    "llama": _SEPARATE_QKV,  # includes SmolLM / SmolLM2
    "mistral": _SEPARATE_QKV,
    "qwen2": _SEPARATE_QKV,
    "qwen3": _SEPARATE_QKV,
    "smollm3": _SEPARATE_QKV,
}


class DeltaMem(nn.Module):
    """Root of an attached adapter: the config, one `DeltaMemLayer` per equipped layer, backbone identity."""

    def __init__(self, config: DeltaMemConfig, layers: dict[int, DeltaMemLayer], backbone: dict):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleDict({str(i): layer for i, layer in layers.items()})
        self.layer_ids = tuple(sorted(layers))
        self.backbone = backbone  # model_type, hidden_size, num_hidden_layers, fingerprint
        self.key = object()  # identifies this model's bindings
        self.hooks: list = []  # forward hook handles, removed by detach_delta_mem

    @property
    def fingerprint(self) -> str:
        return self.backbone["fingerprint"]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The trainable parameters by role, for optimizers that give each its own learning rate:
        `project` (each layer's packed `W = [W_q; W_k; W_v; W_b]`), `gates` (the gate biases `c_b`)
        and `read` (the corrections `U`). Together they are every parameter, each once."""
        groups: dict[str, list[nn.Parameter]] = {"project": [], "gates": [], "read": []}
        for layer in self.layers.values():
            groups["project"].append(layer.W)
            groups["gates"].append(layer.c_b)
            groups["read"] += list(layer.U.values())
        return groups


def get_delta_mem(model: nn.Module) -> DeltaMem:
    dm = getattr(model, "delta_mem", None)
    if not isinstance(dm, DeltaMem):
        raise ValueError("this model has no δ-mem adapter attached: call attach_delta_mem(model, config) or "
                         "load_adapter(model, directory) first")
    return dm


def layout_for(model: nn.Module) -> AttentionLayout:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(f"δ-mem does not know where the attention projections of model_type {model_type!r} are; "
                         f"supported: {', '.join(sorted(ARCHITECTURES))} (packed-QKV models are not supported yet)")
    return ARCHITECTURES[model_type]


def attach_delta_mem(model: nn.Module, config: DeltaMemConfig | None = None) -> nn.Module:
    """Equip `model` with δ-mem in place: freeze every backbone parameter, add the memory
    projections beside each target attention layer, and return the model."""
    config = config or DeltaMemConfig()
    if not isinstance(config, DeltaMemConfig):
        raise ValueError(f"config must be a DeltaMemConfig, got {type(config).__name__}")
    if isinstance(getattr(model, "delta_mem", None), DeltaMem):
        raise ValueError("this model already has a δ-mem adapter attached")
    layout = layout_for(model)
    decoder_layers = model.get_submodule(layout.layers)
    n_layers = len(decoder_layers)
    targets = range(n_layers) if config.target_layers is None else config.target_layers
    bad = [i for i in targets if i >= n_layers]
    if bad:
        raise ValueError(f"DeltaMemConfig.target_layers {bad} out of range: the model has {n_layers} layers")

    for p in model.parameters():
        p.requires_grad_(False)
    fingerprint = backbone_fingerprint(model)
    hidden = model.config.hidden_size
    param = next(model.parameters())
    layers, attns = {}, {}
    for i in targets:
        attn = decoder_layers[i].get_submodule(layout.attention)
        projs = {name: attn.get_submodule(attr) for name, attr in layout.projections}
        layer = DeltaMemLayer(config, hidden, {h: projs[h].out_features for h in config.heads},
                              {h: projs[h].weight.detach() for h in config.heads})
        layers[i] = layer.to(param.device)
        attns[i] = (attn, projs)
    backbone = dict(model_type=model.config.model_type, hidden_size=hidden, num_hidden_layers=n_layers,
                    fingerprint=fingerprint)
    model.delta_mem = DeltaMem(config, layers, backbone)
    decoder = model.get_submodule(layout.layers.rsplit(".", 1)[0])  # sees every call, with or without the LM head
    model.delta_mem.hooks = install_hooks(decoder, model.delta_mem, attns)
    return model


def detach_delta_mem(model: nn.Module) -> nn.Module:
    """Remove an attached adapter (hooks and parameters); the backbone stays frozen."""
    dm = get_delta_mem(model)
    for h in dm.hooks:
        h.remove()
    del model.delta_mem
    return model


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list(get_delta_mem(model).parameters())


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable δ-mem parameters, backbone parameters, and the docs/design.md formula per layer:
    `4 H r d + H r + sum_heads out_features * H r`."""
    dm = get_delta_mem(model)
    d, rows = dm.backbone["hidden_size"], dm.config.state_rows
    formula = sum(4 * rows * d + rows + sum(U.shape[0] * rows for U in layer.U.values()) for layer in dm.layers.values())
    trainable = sum(p.numel() for p in dm.parameters())
    backbone = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("delta_mem."))
    return {"trainable": trainable, "formula": formula, "backbone": backbone}


# ---- save / load ------------------------------------------------------------------------------
def save_adapter(model: nn.Module, directory: str | os.PathLike) -> None:
    """Write `delta_mem_config.json` and `adapter_model.safetensors` into `directory` (atomically)."""
    dm = get_delta_mem(model)
    directory = os.fspath(directory)
    meta = {"format_version": FORMAT_VERSION, "config": dm.config.to_dict(), "backbone": dm.backbone}
    weights = {f"layers.{k}": v.detach().cpu().contiguous() for k, v in _flat_state(dm).items()}
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".adapter-")
    try:
        with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
            json.dump(meta, f, indent=2)
        save_file(weights, os.path.join(tmp, WEIGHTS_NAME), metadata={"format": "deltamem.adapter"})
        os.makedirs(directory, exist_ok=True)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            os.replace(os.path.join(tmp, name), os.path.join(directory, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_adapter_config(directory: str | os.PathLike) -> tuple[DeltaMemConfig, dict]:
    """`(config, backbone info)` stored in an adapter directory."""
    path = os.path.join(os.fspath(directory), CONFIG_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {directory} is not a δ-mem adapter directory")
    try:
        with open(path) as f:
            meta = json.load(f)
        return DeltaMemConfig.from_dict(meta["config"]), meta["backbone"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: malformed adapter config ({e})") from None


def load_adapter(model: nn.Module, directory: str | os.PathLike, check_backbone: bool = True,
                 config: DeltaMemConfig | None = None) -> nn.Module:
    """Load a saved adapter onto `model` (attaching it if needed) and return the model.

    `config` attaches the weights under another config than the saved one (e.g. to continue training
    a token-write adapter as a message-write one); the weights must still fit its shapes, except that
    a config with more state heads (same rank) takes the saved heads as its first ones and starts the
    others with zero corrections (e.g. to grow TSW into MSW).

    Fails loudly on a different backbone (model type, sizes, weight fingerprint
    unless `check_backbone=False`), a different config than the one already
    attached, and missing, unexpected or misshapen weights.
    """
    directory = os.fspath(directory)
    saved, backbone = read_adapter_config(directory)
    config = saved if config is None else config
    mc = model.config
    for key, have in (("model_type", mc.model_type), ("hidden_size", mc.hidden_size),
                      ("num_hidden_layers", mc.num_hidden_layers)):
        if backbone.get(key) != have:
            raise ValueError(f"adapter in {directory} was trained on a backbone with {key}={backbone.get(key)!r}, "
                             f"this model has {key}={have!r}")
    existing = getattr(model, "delta_mem", None)
    if isinstance(existing, DeltaMem) and existing.config != config:
        raise ValueError(f"model already has a δ-mem adapter with a different config ({existing.config}) than "
                         f"{directory} ({config})")
    have = existing.fingerprint if isinstance(existing, DeltaMem) else backbone_fingerprint(model)
    if check_backbone and backbone.get("fingerprint") != have:
        raise ValueError(f"adapter in {directory} was trained on backbone weights {backbone.get('fingerprint')}, "
                         f"this model's weights are {have} (pass check_backbone=False to load anyway)")
    if not isinstance(existing, DeltaMem):
        attach_delta_mem(model, config)
        try:
            return _load_weights(model, directory, saved)
        except Exception:
            detach_delta_mem(model)  # leave the model as it was
            raise
    return _load_weights(model, directory, saved)


def _load_weights(model: nn.Module, directory: str, saved: DeltaMemConfig | None = None) -> nn.Module:
    dm = get_delta_mem(model)
    path = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found")
    weights = {k.removeprefix("layers."): v for k, v in load_file(path).items()}
    own = _flat_state(dm)
    if saved is not None and saved.num_state_heads < dm.config.num_state_heads and saved.rank == dm.config.rank:
        weights = _grow_state_heads(weights, own, saved.state_rows, dm.config.state_rows)
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    if missing or unexpected:
        raise ValueError(f"{path}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    for k, t in own.items():
        if weights[k].shape != t.shape:
            raise ValueError(f"{path}: {k} has shape {list(weights[k].shape)}, the model expects {list(t.shape)}")
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(weights[k])
    return model


def _grow_state_heads(weights: dict, own: dict, rows: int, new_rows: int) -> dict:
    """Saved weights of H state heads as the first H heads of an adapter with more: the new heads keep
    their fresh W_q, W_k, W_v (Kaiming) and W_b (zero), and get zero corrections (U columns), so the
    grown adapter computes exactly what the saved one did until training moves the new heads' U."""
    out = {}
    for k, t in own.items():
        w, new = weights.get(k), t.detach().clone()
        if w is None:
            continue
        if k.endswith(".W") and tuple(w.shape) == (4 * rows, t.shape[1]):
            for p in range(4):  # packed [W_q; W_k; W_v; W_b], each (head, rank)-major
                new[p * new_rows: p * new_rows + rows] = w[p * rows:(p + 1) * rows]
        elif k.endswith(".c_b") and tuple(w.shape) == (rows,):
            new[:rows] = w
        elif ".U." in k and tuple(w.shape) == (t.shape[0], rows):
            new.zero_()
            new[:, :rows] = w
        else:
            new = w  # a shape that does not fit is reported by the caller
        out[k] = new
    return out


def _flat_state(dm: DeltaMem) -> dict[str, torch.Tensor]:
    return dict(dm.layers.state_dict(keep_vars=True))
