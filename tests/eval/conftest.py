"""Eval test fixtures: the runtime tests' tiny random llama models and SmolLM2 tokenizer (reused, not copied),
a tiny backbone folder, and small data files for every suite (built from eval_helpers)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from eval_helpers import LOCOMO, mab_rows

_spec = importlib.util.spec_from_file_location("runtime_fixtures", Path(__file__).parents[1] / "runtime" / "conftest.py")
runtime_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(runtime_fixtures)
embedded, tokenizer, tiny, make_tiny, lm_head_hook = (runtime_fixtures.embedded, runtime_fixtures.tokenizer,
                                                      runtime_fixtures.tiny, runtime_fixtures.make_tiny,
                                                      runtime_fixtures.lm_head_hook)
build_tiny = runtime_fixtures.build_tiny


@pytest.fixture
def data_files(tmp_path):
    """`{suite: path}` of small data files for every suite with a file."""
    from deltamem.eval.mab import write_synthetic

    lc, cr = tmp_path / "locomo.json", tmp_path / "cr.json"
    lc.write_text(json.dumps(LOCOMO))
    cr.write_text(json.dumps(mab_rows()))
    synth = write_synthetic(tmp_path / "synth.json", seed=3, per_task=1, lines=6)
    return {"locomo": str(lc), "mab-cr": str(cr), "mab-synth": synth, "general": None, "synthetic": None}


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tokenizer):
    """A folder holding a tiny random llama (no adapter) and the SmolLM2 tokenizer, for `--backbone`."""
    from deltamem.adapter import detach_delta_mem

    d = tmp_path_factory.mktemp("tiny-backbone")
    model = detach_delta_mem(build_tiny(tokenizer, seed=5))
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return str(d)
