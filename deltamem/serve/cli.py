"""`deltamem serve`: load the model once, open the database, serve the app with uvicorn."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

from . import require_extra


def serve(host: str = "127.0.0.1", port: int = 8000, db: str | None = None, adapter: str | None = None,
          backbone: str | None = None, api_keys: str | None = None, model_name: str | None = None,
          window: int = 1024, max_body_bytes: int = 8 << 20, max_prompt_tokens: int = 4096,
          max_write_tokens: int = 16384, max_new_tokens: int = 512, max_batch: int = 16, batch_wait_ms: float = 5.0,
          model_factory: str | None = None) -> None:
    """Serve an OpenAI-compatible chat API with per-user δ-mem memories stored in a database
    (`--db`: a SQLite file path or URL, default ~/.deltamem/serve.db; or postgresql://...).
    `--api-keys FILE` holds `tenant:key` lines; without it only a loopback host is allowed.
    `--max-batch 1` serves generation requests one at a time. `--model-factory module:function`
    (for tests) builds `(model, tokenizer, description)` instead of loading a backbone."""
    try:
        require_extra()
    except ImportError as e:
        raise SystemExit(f"deltamem serve: error: {e}") from None
    import uvicorn

    from ..store import MemoryStore
    from .app import create_app
    from .auth import KeyRing, is_loopback

    keys = KeyRing.from_file(api_keys) if api_keys else KeyRing()
    if not keys.enabled and not is_loopback(host):
        raise ValueError(f"refusing to serve on {host} without --api-keys: anyone who can reach it could read "
                         "every memory (bind 127.0.0.1, or give --api-keys FILE)")
    logging.basicConfig(level=logging.INFO, format="[deltamem] %(message)s")
    if model_factory:
        module, _, fn = model_factory.partition(":")
        model, tok, note = getattr(importlib.import_module(module), fn)()
    else:
        from ..runtime.model_setup import load_model

        model, tok, note = load_model(backbone, adapter)
    print(f"[deltamem] {note}", file=sys.stderr)
    store = MemoryStore(db)
    if keys.enabled:
        store.set_api_keys(keys.hashes)
    name = model_name or "deltamem-" + (Path(backbone).stem.lower() if backbone else "smollm2-135m-instruct")
    app = create_app(model, tok, store, keys=keys, model_name=name, max_body_bytes=max_body_bytes,
                     max_batch=max_batch, batch_wait_s=batch_wait_ms / 1000, window_tokens=window,
                     max_prompt_tokens=max_prompt_tokens, max_write_tokens=max_write_tokens,
                     max_new_tokens=max_new_tokens)
    print(f"[deltamem] serving {name} on http://{host}:{port} (database {store.engine.url.render_as_string()}, "
          f"{'API keys for ' + str(len(set(keys.hashes.values()))) + ' tenants' if keys.enabled else 'no API keys'})",
          file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
