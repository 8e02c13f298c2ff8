"""Adapter test setup: quiet transformers, one intra-op thread (helpers live in `adapter_helpers.py`)."""

import pytest
import torch

import adapter_helpers  # noqa: F401  (sets transformers' log level on import)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny tensors on a shared 2-core box: one intra-op thread is faster and steadier."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
