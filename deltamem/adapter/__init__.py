"""Attach δ-mem to Hugging Face causal LMs: config, layers, memory state, binding, save/load."""

from .binding import MemoryBinding, use_memory
from .config import DeltaMemConfig
from .fingerprint import adapter_fingerprint, backbone_fingerprint
from .model import (ARCHITECTURES, attach_delta_mem, detach_delta_mem, get_delta_mem, load_adapter, parameter_counts,
                    read_adapter_config, save_adapter, trainable_parameters)
from .state import MemoryState

__all__ = ["DeltaMemConfig", "MemoryState", "MemoryBinding", "use_memory", "attach_delta_mem", "detach_delta_mem", "get_delta_mem",
           "load_adapter", "save_adapter", "read_adapter_config", "parameter_counts", "trainable_parameters",
           "backbone_fingerprint", "adapter_fingerprint", "ARCHITECTURES"]
