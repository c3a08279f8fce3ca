"""Turn measured results into plots, Markdown and a self-contained HTML page.

Nothing here measures or invents a number: every cell comes from ``results`` (the
``results.json`` that :mod:`components.report.build` writes), and missing values show as
``n/a``.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

TASK_COLORS = {"classification": "#1f77b4", "detection": "#d62728"}  # bars of the cost plots


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# ----------------------------------------------------------------------------- tables
def cost_table(results: dict) -> tuple[list[str], list[list[str]]]:
    header = ["Model", "Registered name", "Task", "Input", "Params (M)", "GMACs",
              "Latency b1 (ms)", "Throughput b32 (img/s)", "Peak mem b1 / b32 (MiB)", "Precision"]
    rows = []
    for row in results["cost"]:
        m = row["measured"]
        rows.append([
            row["label"], m["model"], m["task"], "x".join(str(v) for v in m["img_size"]),
            _fmt(m["params"] / 1e6), _fmt(m["gmacs"]), _fmt(m["latency_ms_b1"], 1),
            _fmt(m["throughput_b32"]), f"{_fmt(m['peak_rss_mib_b1'], 0)} / {_fmt(m['peak_rss_mib_b32'], 0)}",
            m["precision"],
        ])
    return header, rows


def training_table(results: dict) -> tuple[list[str], list[list[str]]]:
    header = ["Model", "Tiny variant", "Params (M)", "Metric", "Target", "Time to target (s)",
              "Epochs", "Best", "Final", "Train img/s"]
    rows = []
    for row in results["training"]:
        t = row["result"]
        final = ", ".join(f"{k} {v:.3f}" for k, v in t["final_metrics"].items())
        reached = _fmt(t["time_to_target_s"], 1) if t["reached"] else f"not reached ({t['epochs']} ep)"
        rows.append([
            row["label"], t["model"], _fmt(t["params"] / 1e6, 3), t["metric_name"], _fmt(t["target"]),
            reached, str(t["epochs"]), _fmt(t["best_metric"], 3), final, _fmt(t["train_images_per_s"], 1),
        ])
    return header, rows


def findings(results: dict) -> list[str]:
    """Sentences computed from the numbers (which model wins which measure)."""
    out = []
    cost = [r for r in results["cost"]]
    if cost:
        def best(key, reverse=False):
            rows = [r for r in cost if r["measured"].get(key) is not None]
            return sorted(rows, key=lambda r: r["measured"][key], reverse=reverse)[0] if rows else None

        fast = best("latency_ms_b1")
        thr = best("throughput_b32", reverse=True)
        small = best("gmacs")
        mem = best("peak_rss_mib_b32")
        out.append(f"Lowest batch-1 latency: {fast['label']} ({fast['measured']['latency_ms_b1']:.1f} ms).")
        out.append(f"Highest batch-{results['config']['batch_large']} throughput: {thr['label']} "
                   f"({thr['measured']['throughput_b32']:.2f} img/s).")
        out.append(f"Fewest MACs: {small['label']} ({small['measured']['gmacs']:.2f} GMACs); "
                   f"smallest peak memory at batch {results['config']['batch_large']}: {mem['label']} "
                   f"({mem['measured']['peak_rss_mib_b32']:.0f} MiB).")
    for task, metric in (("classification", "top1"), ("detection", "map50")):
        rows = [r for r in results["training"] if r["result"]["task"] == task]
        if not rows:
            continue
        top = max(rows, key=lambda r: r["result"]["best_metric"])
        reached = [r for r in rows if r["result"]["reached"]]
        line = (f"{task.capitalize()}: best {metric} {top['result']['best_metric']:.3f} by "
                f"{top['label']} (tiny variant)")
        if reached:
            quickest = min(reached, key=lambda r: r["result"]["time_to_target_s"])
            line += (f"; {len(reached)} of {len(rows)} reached the target {rows[0]['result']['target']}, "
                     f"fastest {quickest['label']} in {quickest['result']['time_to_target_s']:.1f} s.")
        else:
            line += f"; none reached the target {rows[0]['result']['target']} within the budget."
        out.append(line)
    return out


# ----------------------------------------------------------------------------- plots
def plot_cost(results: dict, path: Path) -> Path | None:
    if not results["cost"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["label"] for r in results["cost"]]
    panels = [
        ("params", "Parameters (M)", lambda m: m["params"] / 1e6),
        ("gmacs", "GMACs (batch 1)", lambda m: m["gmacs"]),
        ("latency", "Latency batch 1 (ms)", lambda m: m["latency_ms_b1"]),
        ("throughput", f"Throughput batch {results['config']['batch_large']} (img/s)",
         lambda m: m["throughput_b32"]),
        ("memory", f"Peak memory batch {results['config']['batch_large']} (MiB)",
         lambda m: m["peak_rss_mib_b32"]),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    colors = [TASK_COLORS[r["measured"]["task"]] for r in results["cost"]]
    for ax, (_, title, get) in zip(axes.flat, panels):
        ax.barh(labels, [get(r["measured"]) for r in results["cost"]], color=colors)
        ax.set_title(title)
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=8)
    ax = axes.flat[5]
    for r, c in zip(results["cost"], colors):
        ax.scatter(r["measured"]["gmacs"], r["measured"]["latency_ms_b1"], color=c)
        ax.annotate(r["label"], (r["measured"]["gmacs"], r["measured"]["latency_ms_b1"]), fontsize=7)
    ax.set_xlabel("GMACs")
    ax.set_ylabel("latency b1 (ms)")
    ax.set_title("Latency vs compute")
    fig.suptitle(f"Inference cost on {results['machine']['cpu']} ({results['machine']['threads']} threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_training(results: dict, path: Path) -> Path | None:
    if not results["training"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in ("classification", "detection")
             if any(r["result"]["task"] == t for r in results["training"])]
    fig, axes = plt.subplots(1, len(tasks), figsize=(7 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = [r for r in results["training"] if r["result"]["task"] == task]
        for r in rows:
            curve = r["result"]["curve"]
            ax.plot([p["train_s"] for p in curve], [p["metric"] for p in curve], marker="o", label=r["label"])
        ax.axhline(rows[0]["result"]["target"], linestyle="--", color="gray", label="target")
        ax.set_xlabel("training time (s, optimizer steps only)")
        ax.set_ylabel(f"val {rows[0]['result']['metric_name']}")
        ax.set_title(f"{task}: tiny variants on the embedded dataset")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- documents
def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _machine_lines(results: dict) -> list[str]:
    m = results["machine"]
    return [
        f"- Machine: {m['cpu']}, {m['cores']} cores, torch threads {m['threads']}, "
        f"fast bf16 (AMX) {m['fast_bf16']}; load average {m['load_before']} before, {m['load_after']} after",
        f"- Software: Python {m['python']}, torch {m['torch']}, Ray {m['ray']}; commit {m['commit']}",
        f"- Generated {results['generated']} in {results['elapsed_s']:.0f} s; mode **{results['mode']}**",
    ]


METHOD = [
    "Cost: each model built with random weights from `components.models`; input = uint8 patch "
    "tensors of random pixels as the data layer produces them. GMACs = `torch.utils.flop_counter` "
    "FLOPs / 2 at batch 1 (papers' \"GFLOPs\"). Latency = median of timed runs at batch 1 after a "
    "warm-up; throughput = images / seconds at the large batch; peak memory = resident-set "
    "high-water mark over the process's size before the model was built.",
    "Training: the tiny variant of each family trained with the project's step (AdamW, warmup + "
    "cosine, autocast) on the same materialised, augmented batches of the embedded synthetic "
    "dataset, evaluated by the shared evaluator after every epoch (top-1; COCO mAP50 for "
    "detectors). Time to target counts optimizer steps only.",
]


def markdown(results: dict, plots: dict[str, Path | None]) -> str:
    parts = ["# vitpipe production-readiness report", "",
             "CNN baseline vs vision transformers vs transformer detectors, measured on this machine.",
             "", *_machine_lines(results), "", "## Findings", ""]
    parts += [f"- {line}" for line in findings(results)] + [""]
    if results["cost"]:
        kind = "paper-sized models" if results["config"]["cost_models"] == "full" else "tiny variants"
        parts += [f"## Inference cost ({kind})", "", _md_table(*cost_table(results)), ""]
        if plots.get("cost"):
            parts += [f"![inference cost]({plots['cost'].name})", ""]
    if results["training"]:
        parts += ["## Training to a target on the embedded dataset", "", _md_table(*training_table(results)), ""]
        if plots.get("training"):
            parts += [f"![training curves]({plots['training'].name})", ""]
    parts += ["## Method", ""] + [f"- {line}" for line in METHOD] + [""]
    return "\n".join(parts)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path | None, alt: str) -> str:
    if not path:
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def html_page(results: dict, plots: dict[str, Path | None]) -> str:
    machine = "".join(f"<li>{html.escape(line[2:]).replace('**', '')}</li>" for line in _machine_lines(results))
    found = "".join(f"<li>{html.escape(line)}</li>" for line in findings(results))
    sections = []
    if results["cost"]:
        sections.append("<h2>Inference cost</h2>" + _html_table(*cost_table(results)) + _img(plots.get("cost"), "cost"))
    if results["training"]:
        sections.append("<h2>Training to a target</h2>" + _html_table(*training_table(results))
                        + _img(plots.get("training"), "training"))
    method = "".join(f"<li>{html.escape(line)}</li>" for line in METHOD)
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>vitpipe report</title>"
            f"<style>{style}</style></head><body><h1>vitpipe production-readiness report</h1>"
            f"<ul>{machine}</ul><h2>Findings</h2><ul>{found}</ul>{''.join(sections)}"
            f"<h2>Method</h2><ul>{method}</ul></body></html>")
