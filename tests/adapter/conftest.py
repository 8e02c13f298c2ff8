"""Adapter test setup: quiet transformers (helpers live in `adapter_helpers.py`)."""

import adapter_helpers  # noqa: F401  (sets transformers' log level on import)
