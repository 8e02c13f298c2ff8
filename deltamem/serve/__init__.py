"""The HTTP server (`deltamem serve`): FastAPI + uvicorn from the `serve` extra, imported lazily so that
`import deltamem` never needs them."""

from __future__ import annotations

import importlib.util

EXTRA = ("fastapi", "uvicorn", "sqlalchemy")


def require_extra() -> None:
    """Fail with the install command when the `serve` extra is missing."""
    missing = [m for m in EXTRA if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"the server needs {', '.join(missing)}: pip install 'deltamem[serve]'")
