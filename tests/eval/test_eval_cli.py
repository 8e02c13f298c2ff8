"""`deltamem eval` end to end on a tiny backbone folder, resuming, and bad input reported before the model load."""

from __future__ import annotations

import json
import os
import sys

import pytest

from deltamem import cli
from deltamem.eval import EvalSpec, run_eval
from deltamem.eval.runner import RESULTS, read_results

from eval_helpers import bow_encode


def run_main(argv, capsys):
    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def no_model(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr("deltamem.runtime.model_setup.load_model", fail)


def test_eval_then_report_from_the_command_line(tiny_dir, data_files, tmp_path, capsys):
    out = str(tmp_path / "res")
    common = ["--backbone", tiny_dir, "--data", data_files["locomo"], "--out", out, "--limit", "2",
              "--max-new-tokens", "3", "--window", "96", "--threads", "1"]
    rc, text, err = run_main(["eval", "locomo", "--method", "window", *common], capsys)
    assert rc == 0, err
    assert "| window | 96 |" in text and "UNTRAINED adapter" in err
    rc, text, err = run_main(["eval", "locomo", "--method", "delta-mem", "--condition", "window+memory", *common],
                             capsys)
    assert rc == 0, err
    for f in ("results.jsonl", "summary.json", "table.md", "locomo_window.png", "locomo_categories_w96.png"):
        assert os.path.getsize(os.path.join(out, f)) > 0
    assert len(read_results(out)) == 8  # 2 conversations x 2 items x 2 methods
    merged = str(tmp_path / "merged")
    rc, text, err = run_main(["eval", "report", out, "--out", merged], capsys)
    assert rc == 0, err
    assert "δ-mem / window" in text and "delta-mem:window+memory" in text
    assert json.loads(open(os.path.join(merged, "summary.json")).read())["ratios"]


@pytest.mark.parametrize("argv, message", [
    (["eval", "locomo", "--method", "delta-mem"], "--method delta-mem needs --condition"),
    (["eval", "locomo", "--method", "window", "--condition", "memory-only"], "--condition applies to --method delta-mem"),
    (["eval", "locomo", "--method", "window", "--window", "-1"], "window must be an int >= 0"),
    (["eval", "locomo", "--method", "window", "--limit", "0"], "limit must be a positive int"),
])
def test_bad_options_fail_before_the_model_load(argv, message, no_model, capsys, data_files):
    rc, _, err = run_main(argv + ["--data", data_files["locomo"]], capsys)
    assert rc == 2 and message in err


def test_bad_data_names_file_and_field_before_the_model_load(no_model, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"context": "x", "questions": ["q"], "answers": "a", "metadata": {"source": "s"}}]))
    rc, _, err = run_main(["eval", "mab-cr", "--method", "none", "--data", str(bad)], capsys)
    assert rc == 2 and f"{bad}: row [0] field 'answers' must be a list" in err
    rc, _, err = run_main(["eval", "locomo", "--method", "none", "--data", str(tmp_path / "nope.json")], capsys)
    assert rc == 2 and "does not exist" in err


def test_a_missing_optional_package_is_named_before_the_model_load(no_model, monkeypatch, capsys, data_files):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    rc, _, err = run_main(["eval", "locomo", "--method", "rag-dense", "--data", data_files["locomo"]], capsys)
    assert rc == 2 and "pip install sentence-transformers" in err


def test_report_on_an_empty_folder_is_an_error(tmp_path, capsys):
    rc, _, err = run_main(["eval", "report", str(tmp_path)], capsys)
    assert rc == 2 and "no results found" in err


def test_reruns_resume_and_windows_share_window_free_results(tiny, tokenizer, data_files, tmp_path, monkeypatch):
    out = str(tmp_path / "r")

    def go(method, cond=None, window=96):
        spec = EvalSpec("locomo", method, cond, window=window, data=data_files["locomo"], out=out, limit=2,
                        max_new_tokens=3)
        return run_eval(tiny, tokenizer, spec, encoder=bow_encode, progress=False)

    go("window")
    go("delta-mem", "memory-only")
    first = read_results(out)
    with open(os.path.join(out, RESULTS)) as f:
        lines = f.readlines()
    with open(os.path.join(out, RESULTS), "w") as f:  # an interrupted run: the last record torn in half
        f.writelines(lines[:-1] + [lines[-1][:20]])

    import deltamem.eval.runner as runner

    real_build, built = runner.build, []
    monkeypatch.setattr(runner, "build", lambda env, m, c, *a: built.append((m, c, env.window)) or real_build(env, m, c, *a))
    go("window")
    go("delta-mem", "memory-only")  # redoes only the torn item's conversation
    go("delta-mem", "memory-only", window=200)  # memory-only ignores W: nothing to do
    go("window", window=200)  # a new W for a method that uses it: everything again
    assert built == [("delta-mem", "memory-only", 96)] + [("window", None, 200)] * 2  # once per conversation
    after = read_results(out)
    assert {r["key"] for r in after} >= {r["key"] for r in first}
    assert len(after) == len(first) + 4
    assert sorted({r["window"] for r in after if r["label"] == "window"}) == [96, 200]
    # the memory state was written once per conversation and reused from the cache
    assert len([f for f in os.listdir(os.path.join(out, "cache")) if f.startswith("state-")]) == 2


def test_synthetic_suite_from_the_command_line(tiny_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as ex:
        cli.main(["eval", "synthetic", "--help"])
    assert ex.value.code == 0 and "held-out synthetic chats" in capsys.readouterr().out
    out = str(tmp_path / "syn")
    common = ["--backbone", tiny_dir, "--out", out, "--conversations", "recall-000,update-000", "--max-new-tokens",
              "3", "--threads", "1"]
    for cond in ("memory-only", "mismatched"):
        rc, text, err = run_main(["eval", "synthetic", "--method", "delta-mem", "--condition", cond, *common], capsys)
        assert rc == 0, err
    rc, text, err = run_main(["eval", "report", out], capsys)
    assert rc == 0, err
    assert "### synthetic" in text and "| recall | update | overall | answer CE |" in text
    assert "answer CE, delta-mem:memory-only / delta-mem:mismatched" in text
    assert {r["conversation"] for r in read_results(out)} == {"recall-000", "update-000"}


def test_synthetic_takes_no_data_file(no_model, capsys):
    rc, _, err = run_main(["eval", "synthetic", "--method", "none", "--data", "x.json"], capsys)
    assert rc == 2 and "takes no --data" in err
