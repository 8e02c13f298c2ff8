"""Results -> summary JSON, Markdown table, plots, and the two paper ratios.

Scores are means over answered items (micro averages, as the official LoCoMo
script reports them). LoCoMo's headline is the 1-4 aggregate (category 5,
adversarial, is reported beside it); other suites' headline is the mean over
all items. Methods that do not use the window (`none`, `full`, memory-only,
full+memory and mismatched δ-mem) have window "-" and take part in every window's
comparison. The ratios, per suite and window W:

* delta-mem / window: δ-mem `window+memory` at W against the `window` baseline at W;
* delta-mem / best: the same against the best non-δ-mem method at W.

(and the same two for every other δ-mem condition that was run). Only rows
with as many answered items from the same conversations take part (a baseline
still running is left out of the comparison).

Each row also shows the mean answer CE (teacher-forced cross-entropy of the
gold answer where the reply is generated, nats per token; records from before
it was measured are left out of the mean). When a δ-mem condition and its
control (memory-only and mismatched; window+memory and window+mismatched at the
same W; full+memory and full+mismatched) ran on the same items, the ratios add
answer CE own / mismatched: below 1 when the conversation's own memory makes the
gold answer likelier than another conversation's memory does.
"""

from __future__ import annotations

import glob
import json
import os
from collections import defaultdict

from .locomo import CATEGORIES

SUMMARY, TABLE = "summary.json", "table.md"
HEADLINE_DM = ("window+memory", "full+memory", "memory-only", "window+mismatched")
CONTROLS = (("memory-only", "mismatched"), ("window+memory", "window+mismatched"),
            ("full+memory", "full+mismatched"))  # own memory, its control


def collect(dirs: list[str]) -> list[dict]:
    """Every record under the given folders (`results.jsonl`, searched recursively); the last one per key wins."""
    from .runner import read_results

    by_key: dict[str, dict] = {}
    for d in dirs:
        if not os.path.isdir(d):
            raise FileNotFoundError(f"no results folder {d}")
        found = sorted({os.path.dirname(p) for p in glob.glob(os.path.join(d, "**", "results.jsonl"), recursive=True)})
        for folder in found:
            for r in read_results(folder):
                if "key" in r:
                    by_key[r["key"]] = r
    return list(by_key.values())


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def aggregate(records: list[dict]) -> dict:
    """`{suite: {"rows": [...], "perplexity": {label: ppl}}}`; a row is one (method label, window)."""
    groups: dict = defaultdict(list)
    ppl: dict = defaultdict(dict)
    for r in records:
        if r.get("metric") == "perplexity":
            ppl[r["suite"]][r["label"]] = r["perplexity"]
            continue
        groups[(r["suite"], r["label"], r.get("window"))].append(r)
    out: dict = {}
    for (suite, lab, win), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)):
        scored = [r for r in rs if r.get("score") is not None]
        cats = defaultdict(list)
        for r in scored:
            cats[str(r["category"])].append(r["score"])
        row = {"label": lab, "window": win, "n": len(scored), "skipped": len(rs) - len(scored),
               "conversations": sorted({r["conversation"] for r in rs}),
               "overall": _mean([r["score"] for r in scored]),
               "categories": {c: {"score": _mean(v), "n": len(v)} for c, v in sorted(cats.items())},
               "latency_s": _mean([r["latency_s"] for r in scored if r.get("latency_s") is not None]),
               "answer_ce": _mean([r["answer_ce"] for r in scored if r.get("answer_ce") is not None]),
               "notes": sorted({r.get("skipped") or r.get("note") or "" for r in rs} - {""})}
        if suite == "locomo":
            row["overall_1_4"] = _mean([r["score"] for r in scored if int(r["category"]) in (1, 2, 3, 4)])
            row["overall_1_5"] = row["overall"]
        row["headline"] = row.get("overall_1_4", row["overall"])
        out.setdefault(suite, {"rows": [], "perplexity": {}})["rows"].append(row)
    for suite, p in ppl.items():
        out.setdefault(suite, {"rows": [], "perplexity": {}})["perplexity"] = p
    return out


def ratios(agg: dict) -> list[dict]:
    """The paper's two ratios per suite, window and δ-mem condition (see the module docstring)."""
    out = []
    for suite, s in agg.items():
        rows = [r for r in s["rows"] if r["n"] > 0 and r["headline"] is not None]
        windows = sorted({r["window"] for r in rows if r["window"] is not None}) or [None]
        for w in windows:
            here = [r for r in rows if r["window"] in (w, None)]
            for cond in HEADLINE_DM:
                dm = next((r for r in here if r["label"] == f"delta-mem:{cond}"), None)
                if dm is None:
                    continue
                # compare on the same items only: a baseline that has not finished them is left out
                base = [r for r in here if not r["label"].startswith("delta-mem") and r["n"] == dm["n"]
                        and r["conversations"] == dm["conversations"]]
                win = next((r for r in base if r["label"] == "window"), None)
                best = max(base, key=lambda r: r["headline"], default=None)
                out.append({"suite": suite, "window": w, "delta_mem": dm["label"], "delta_mem_score": dm["headline"],
                            "window_score": win["headline"] if win else None,
                            "best_label": best["label"] if best else None,
                            "best_score": best["headline"] if best else None,
                            "delta_mem/window": _ratio(dm["headline"], win["headline"] if win else None),
                            "delta_mem/best": _ratio(dm["headline"], best["headline"] if best else None)})
        for own_c, mis_c in CONTROLS:
            for w in sorted({r["window"] for r in rows if r["label"] == f"delta-mem:{own_c}"}, key=lambda w: w or 0):
                own = next(r for r in rows if r["label"] == f"delta-mem:{own_c}" and r["window"] == w)
                other = next((r for r in rows if r["label"] == f"delta-mem:{mis_c}" and r["window"] == w), None)
                if other and own["answer_ce"] and other["answer_ce"] and own["n"] == other["n"] \
                        and own["conversations"] == other["conversations"]:
                    out.append({"suite": suite, "window": w, "answer_ce": f"delta-mem:{own_c} / delta-mem:{mis_c}",
                                "own_ce": own["answer_ce"], "mismatched_ce": other["answer_ce"],
                                "ratio": own["answer_ce"] / other["answer_ce"]})
        p = s.get("perplexity") or {}
        if "none" in p:
            for lab, v in p.items():
                if lab.startswith("delta-mem"):
                    out.append({"suite": suite, "perplexity": lab, "ratio_to_backbone": v / p["none"]})
    return out


def _order(lab: str) -> tuple:
    """Baselines in the order of `METHODS`, then the δ-mem conditions in the order of `CONDITIONS`."""
    from .methods import CONDITIONS, METHODS

    if lab.startswith("delta-mem:"):
        cond = lab.split(":", 1)[1]
        return (len(METHODS), CONDITIONS.index(cond) if cond in CONDITIONS else len(CONDITIONS), lab)
    return (METHODS.index(lab) if lab in METHODS else len(METHODS), 0, lab)


def _ratio(a, b):
    return a / b if a is not None and b else None


def _f(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(agg: dict, rats: list[dict]) -> str:
    lines = []
    for suite, s in agg.items():
        cats = sorted({c for r in s["rows"] for c in r["categories"]})
        extra = ["1-4", "1-5"] if suite == "locomo" else ["overall"]
        names = [f"{c} {CATEGORIES[int(c)]}" if suite == "locomo" and c.isdigit() and int(c) in CATEGORIES else c
                 for c in cats]
        lines += [f"### {suite}", "", "| method | W | n | " + " | ".join(names + extra) +
                  " | answer CE | s / question |", "|---|---:|---:|" + "---:|" * (len(cats) + len(extra) + 2)]
        for r in sorted(s["rows"], key=lambda r: (r["window"] or 0, _order(r["label"]))):
            vals = [_f(r["categories"].get(c, {}).get("score")) for c in cats]
            vals += [_f(r.get("overall_1_4")), _f(r["overall"])] if suite == "locomo" else [_f(r["overall"])]
            n = f"{r['n']}" + (f" (+{r['skipped']} skipped)" if r["skipped"] else "")
            lines.append(f"| {r['label']} | {r['window'] or '-'} | {n} | " + " | ".join(vals) +
                         f" | {_f(r.get('answer_ce'))} | {_f(r['latency_s'], 2)} |")
        for lab, v in (s.get("perplexity") or {}).items():
            lines.append(f"\nperplexity ({lab}): {v:.2f}")
        lines.append("")
    if rats:
        lines += ["### ratios", "", "| suite | W | δ-mem | δ-mem / window | δ-mem / best non-δ-mem (best) |",
                  "|---|---:|---|---:|---|"]
        for q in rats:
            if "perplexity" in q:
                lines.append(f"| {q['suite']} | - | {q['perplexity']} perplexity / backbone | "
                             f"{q['ratio_to_backbone']:.3f} | |")
                continue
            if "answer_ce" in q:
                lines.append(f"| {q['suite']} | {q['window'] or '-'} | answer CE, {q['answer_ce']} | {q['ratio']:.3f} "
                             f"({q['own_ce']:.3f} / {q['mismatched_ce']:.3f}) | |")
                continue
            lines.append(f"| {q['suite']} | {q['window'] or '-'} | {q['delta_mem']} | {_f(q['delta_mem/window'], 2)} | "
                         f"{_f(q['delta_mem/best'], 2)} ({q['best_label']}) |")
        lines.append("")
    return "\n".join(lines)


def plots(agg: dict, out_dir: str) -> list[str]:
    """Per-category bars per method (one figure per suite and window) and headline score vs window."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install matplotlib (or pip install 'deltamem[eval]')") from None
    files = []
    for suite, s in agg.items():
        rows = [r for r in s["rows"] if r["n"] > 0]
        windows = sorted({r["window"] for r in rows if r["window"] is not None}) or [None]
        cats = sorted({c for r in rows for c in r["categories"]})
        for w in windows:
            here = sorted([r for r in rows if r["window"] in (w, None)], key=lambda r: r["label"])
            if not here:
                continue
            fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cats) * max(1, len(here)) / 3), 4))
            width = 0.8 / len(here)
            for j, r in enumerate(here):
                ax.bar([i + j * width for i in range(len(cats))],
                       [r["categories"].get(c, {}).get("score") or 0 for c in cats], width, label=r["label"])
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cats))], cats, rotation=20, fontsize=8)
            ax.set_ylabel("score")
            ax.set_title(f"{suite}: score per category" + (f", W = {w}" if w else ""))
            ax.legend(fontsize=7, ncol=2)
            fig.tight_layout()
            files.append(os.path.join(out_dir, f"{suite}_categories" + (f"_w{w}" if w else "") + ".png"))
            fig.savefig(files[-1], dpi=110)
            plt.close(fig)
        fig, ax = plt.subplots(figsize=(6, 4))
        for lab in sorted({r["label"] for r in rows}):
            pts = sorted((r["window"], r["headline"]) for r in rows if r["label"] == lab and r["window"] is not None)
            flat = [r["headline"] for r in rows if r["label"] == lab and r["window"] is None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=lab)
            elif flat and flat[0] is not None:
                ax.axhline(flat[0], linestyle="--", linewidth=1, label=f"{lab} (no window)",
                           color=f"C{len(ax.lines) % 10}")
        ax.set_xlabel("window W (history tokens in the prompt)")
        ax.set_ylabel("LoCoMo F1, categories 1-4" if suite == "locomo" else "score")
        ax.set_title(f"{suite}: score vs window")
        ax.legend(fontsize=7)
        fig.tight_layout()
        files.append(os.path.join(out_dir, f"{suite}_window.png"))
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    return files


def write_reports(dirs: list[str], out_dir: str) -> dict:
    """Merge the results under `dirs` and write summary JSON, Markdown table and plots into `out_dir`."""
    agg = aggregate(collect(dirs))
    rats = ratios(agg)
    os.makedirs(out_dir, exist_ok=True)
    summary = {"suites": agg, "ratios": rats, "sources": list(dirs)}
    summary["plots"] = plots(agg, out_dir)
    with open(os.path.join(out_dir, SUMMARY), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(out_dir, TABLE), "w") as f:
        f.write(markdown(agg, rats))
    return summary
