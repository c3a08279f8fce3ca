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
def _auto(m: dict) -> dict:
    """The precision ``auto`` picks for this model: its timings."""
    return m["by_precision"][m["auto_pick"]]


def cost_table(results: dict) -> tuple[list[str], list[list[str]]]:
    header = ["Model", "Registered name", "Task", "Input", "Params (M)", "GMACs (b1)", "Precision",
              "Latency b1 p50 (ms)", "Throughput (img/s @ batch)", "Peak memory b1 / batch (MiB)"]
    rows = []
    for row in results["cost"]:
        m = row["measured"]
        for prec, p in m["by_precision"].items():
            mark = " (auto)" if prec == m["auto_pick"] and len(m["by_precision"]) > 1 else ""
            rows.append([
                row["label"], m["model"], m["task"], "x".join(str(v) for v in m["img_size"]),
                _fmt(m["params"] / 1e6), _fmt(m["gmacs"], 2 if m["gmacs"] >= 1 else 4), prec + mark,
                _fmt(p["latency_ms_b1"], 1),
                f"{_fmt(p['throughput'])} @ {m['batch_large']}",
                f"{_fmt(p['peak_rss_mib_b1'], 0)} / {_fmt(p['peak_rss_mib_large'], 0)}",
            ])
    return header, rows


def training_table(results: dict) -> tuple[list[str], list[list[str]]]:
    header = ["Model (small variant)", "Registered name", "Params (M)", "Convolutions", "Metric",
              "Best", "Final", "Target", "Time to target (s)", "Epochs", "Train s", "Train img/s"]
    rows = []
    for row in results["training"]:
        t = row["result"]
        final = ", ".join(f"{k} {v:.3f}" for k, v in t["final_metrics"].items())
        reached = _fmt(t["time_to_target_s"], 1) if t["reached"] else "not reached"
        rows.append([
            row["label"], t["model"], _fmt(t["params"] / 1e6, 3), row.get("conv_bias", "n/a"),
            t["metric_name"], _fmt(t["best_metric"], 3), final, _fmt(t["target"]), reached, str(t["epochs"]),
            _fmt(t["train_s"], 0), _fmt(t["train_images_per_s"], 1),
        ])
    return header, rows


def training_budget(results: dict, task: str | None = None) -> str:
    """The training comparison's budget (of ``task``'s rows, default the first row's task):
    the data it read and the limits it ran under."""
    c = results["config"]
    rows = [r for r in results.get("training") or [] if task is None or r["result"]["task"] == task]
    first = rows[0] if rows else {}
    data = "synthetic" if c.get("data_root") is None else "given"
    return (f"{first.get('num_train', c['synth_num_train'])} {data} training images "
            f"({first.get('num_val', c['synth_num_val'])} val) at "
            f"{first.get('image_size', c['classification_image_size'])} px, batch {c['batch_size']}, "
            f"{c['augment_passes']} augmented "
            f"passes replayed, at most {c['max_epochs']} epochs or {c['time_budget_s']:.0f} s of optimizer "
            "steps per model, whichever ends first")


# ----------------------------------------------------------------------------- findings
def _ms(value: float) -> str:
    return f"{value:,.0f} ms" if value >= 10 else f"{value:,.1f} ms"


def _cost_findings(results: dict) -> list[str]:
    out = []
    cost = results["cost"]
    threads = f"{results['machine']['threads']} thread" + ("s" if results["machine"]["threads"] != 1 else "")
    for task in ("classification", "detection"):
        rows = sorted((r for r in cost if r["measured"]["task"] == task),
                      key=lambda r: _auto(r["measured"])["latency_ms_b1"])
        if not rows:
            continue
        first = rows[0]
        fast = _auto(first["measured"])["latency_ms_b1"]
        ranked = "; ".join(
            f"{r['label']} {_ms(_auto(r['measured'])['latency_ms_b1'])} ({r['measured']['auto_pick']}, "
            f"{r['measured']['gmacs']:.3g} GMACs, "
            f"{_auto(r['measured'])['latency_ms_b1'] / fast:.1f}x)" for r in rows)
        out.append(f"Faster per image ({task}, batch 1, {threads}, each at the precision `auto` "
                   f"picks): {ranked}.")
        rate = lambda r: r["measured"]["gmacs"] / (_auto(r["measured"])["latency_ms_b1"] / 1e3)  # noqa: E731
        rates = sorted(rows, key=rate, reverse=True)
        best, worst = rates[0], rates[-1]
        if len(rows) > 1:
            out.append(f"Compute efficiency ({task}, batch 1): {best['label']} runs {rate(best):.0f} GMAC/s, "
                       f"{worst['label']} {rate(worst):.0f} GMAC/s: latency follows MACs only roughly, "
                       "the kind of operation (large GEMMs vs convolutions, sampling, small ops) matters.")
        mem = sorted(rows, key=lambda r: _auto(r["measured"])["peak_rss_mib_b1"])
        out.append(
            f"Memory ({task}, peak resident, weights + activations): batch 1 "
            + ", ".join(f"{r['label']} {_auto(r['measured'])['peak_rss_mib_b1']:.0f} MiB" for r in mem)
            + "; at the large batch "
            + ", ".join(f"{r['label']} {_auto(r['measured'])['peak_rss_mib_large']:.0f} MiB @ "
                        f"{r['measured']['batch_large']}" for r in mem) + ".")
    bf16 = [r for r in cost if r["measured"]["bf16_speedup_b1"] is not None]
    if bf16:
        picks = [r["label"] for r in bf16 if r["measured"]["auto_pick"] == "bf16"]
        speedups = ", ".join(f"{r['label']} {r['measured']['bf16_speedup_b1']:.2f}x" for r in bf16)
        out.append(f"Precision: bf16 autocast vs fp32 at batch 1: {speedups}; `precision: auto`'s rule "
                   f"picks bf16 for {len(picks)} of {len(bf16)}"
                   + (f" ({', '.join(picks)})." if picks else "."))
    elif cost:
        out.append("Precision: this CPU has no native bf16 (AMX / AVX512-BF16): fp32 only, as `auto` picks.")
    targets = sorted(results["config"].get("latency_targets_ms") or [])
    if cost and targets:
        bands, previous = [], 0.0
        for bound in [*targets, float("inf")]:
            inside = [r for r in cost if previous <= _auto(r["measured"])["latency_ms_b1"] < bound]
            name = f"under {bound:,.0f} ms" if bound != float("inf") else f"over {previous:,.0f} ms"
            if previous and bound != float("inf"):
                name = f"{previous:,.0f}-{bound:,.0f} ms"
            bands.append(f"{name}: " + (", ".join(
                f"{r['label']} (up to {_auto(r['measured'])['throughput']:.1f} img/s batched)" for r in inside)
                or "none"))
            previous = bound
        out.append(f"Production readiness on this machine (batch-1 latency of one replica with "
                   f"{threads}): " + "; ".join(bands) + ". A service's latency budget picks from "
                   "these bands; throughput scales with replicas (docs/serving.md).")
    return out


def _training_findings(results: dict) -> list[str]:
    out = []
    for task, metric in (("classification", "top1"), ("detection", "map50")):
        rows = [r for r in results["training"] if r["result"]["task"] == task]
        if not rows:
            continue
        ranked = sorted(rows, key=lambda r: r["result"]["best_metric"], reverse=True)
        text = ", ".join(f"{r['label']} {r['result']['best_metric']:.3f}" for r in ranked)
        line = f"Training ({task}, small variants, {training_budget(results, task)}): best {metric} {text}"
        chance = rows[0].get("chance")
        if chance is not None:
            line += f" (chance {chance:.3f})"
        reached = [r for r in rows if r["result"]["reached"]]
        if reached:
            quickest = min(reached, key=lambda r: r["result"]["time_to_target_s"])
            line += (f"; {len(reached)} of {len(rows)} reached the target {rows[0]['result']['target']}, "
                     f"first {quickest['label']} in {quickest['result']['time_to_target_s']:.1f} s.")
        else:
            line += f"; none reached the target {rows[0]['result']['target']} within the budget."
        out.append(line)
        conv = [r["result"]["best_metric"] for r in rows if r.get("conv_bias") == "convolutions"]
        plain = [r["result"]["best_metric"] for r in rows if r.get("conv_bias") == "none"]
        if conv and plain:
            gap = sum(conv) / len(conv) - sum(plain) / len(plain)
            verdict = ("the transformers without convolutions need more data (or steps) to get as far: "
                       "the convolutional inductive bias pays on little data" if gap > 0.05 else
                       "no clear advantage of convolutions at this budget" if gap > -0.05 else
                       "the attention-only models are ahead at this budget")
            out.append(f"Inductive bias ({task}): with convolutions (CNN, conv stem, ResNet stem) mean best "
                       f"{metric} {sum(conv) / len(conv):.3f}, attention only {sum(plain) / len(plain):.3f}: "
                       f"{verdict}.")
    return out


def findings(results: dict) -> list[str]:
    """Sentences computed from the numbers: which is faster per image, how memory compares,
    which precision pays, which models fit which latency, which need more data."""
    return _cost_findings(results) + _training_findings(results)


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
        ("latency", "Latency batch 1 (ms, auto's precision)", lambda m: _auto(m)["latency_ms_b1"]),
        ("throughput", "Throughput at the large batch (img/s)", lambda m: _auto(m)["throughput"]),
        ("memory", "Peak memory batch 1 (MiB)", lambda m: _auto(m)["peak_rss_mib_b1"]),
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
        point = (r["measured"]["gmacs"], _auto(r["measured"])["latency_ms_b1"])
        ax.scatter(*point, color=c)
        ax.annotate(r["label"], point, fontsize=7)
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
        ax.set_title(f"{task}: small variants on the synthetic dataset")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- documents
def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _load_text(load) -> str:
    return "/".join(f"{v:.1f}" for v in load) if load else "n/a"


def _machine_lines(results: dict) -> list[str]:
    m = results["machine"]
    return [
        f"- Machine: {m['cpu']}, {m['cores']} cores, torch threads {m['threads']}, "
        f"{m.get('memory_gib', 'n/a')} GiB, native bf16 (AMX / AVX512-BF16) {m['fast_bf16']}; load average "
        f"(1/5/15 min) {_load_text(m.get('loadavg_at_start'))} at the start, {_load_text(m.get('loadavg_at_end'))} "
        "at the end" + (f"; measured GEMM peak fp32 {m['gemm_peak_tflops']['fp32']} TFLOP/s"
                        + (f", bf16 {m['gemm_peak_tflops']['bf16']}" if 'bf16' in m['gemm_peak_tflops'] else "")
                        if m.get("gemm_peak_tflops") else ""),
        f"- Software: Python {m['python']}, torch {m['torch']}, Ray {m['ray']}; commit {m['commit']}",
        f"- Generated {results['generated']} in {results['elapsed_s']:.0f} s; mode **{results['mode']}**",
    ]


def method(results: dict) -> list[str]:
    c = results["config"]
    lines = [
        "Cost: each model built with random weights from `components.models` at the input size in the "
        "table (nothing downloaded) and measured in a fresh process; input = uint8 patch tensors of random "
        "pixels as the data layer produces them. GMACs = `torch.utils.flop_counter` FLOPs / 2 at batch 1 "
        "(papers' \"GFLOPs\"; deformable attention's sampling is not counted). Latency = median of "
        f"{c['latency_runs']} timed batch-1 runs after {c['warmup_runs']} untimed; throughput = images / "
        f"seconds over {c['throughput_batches']} timed batch(es) at the batch in the table after one untimed; "
        "peak memory = resident-set high-water mark (VmHWM, reset per phase) over the process's size "
        "before the model was built: weights + activations + workspace. fp32 always; bf16 autocast too on "
        "a CPU with native bf16; `(auto)` marks what `precision: auto`'s rule (bf16 >= 1.1x fp32) picks "
        "from these batch-1 timings.",
        "Training: small registered variants (named by what they are, not by the real models they scale "
        "down), each trained with the project's step (AdamW, warmup + cosine, autocast, clipping) on the same "
        "materialised, augmented batches of the synthetic shapes dataset and evaluated by the shared "
        f"evaluator after every epoch (top-1; COCO mAP50 for detectors). Budget: {training_budget(results)}. "
        "Time to target counts optimizer steps only.",
    ]
    return [line for line, shown in zip(lines, (bool(results["cost"]), bool(results["training"]))) if shown]


def _cost_heading(results: dict) -> str:
    return ("Inference cost (test-sized run: tiny models, not the real ones)" if results["mode"] == "quick"
            else "Inference cost of the real-size models at their input sizes")


def markdown(results: dict, plots: dict[str, Path | None], image_dir: str = "") -> str:
    """The report in Markdown; plots are linked as ``image_dir + file name``."""
    parts = ["# vitpipe production-readiness report", "",
             "CNN vs vision transformers vs transformer detectors: cost of the real-size models and a "
             "training comparison of small variants, measured on this machine.",
             "", *_machine_lines(results), "", "## Findings", ""]
    parts += [f"- {line}" for line in findings(results)] + [""]
    if results["cost"]:
        parts += [f"## {_cost_heading(results)}", "", md_table(*cost_table(results)), ""]
        if plots.get("cost"):
            parts += [f"![inference cost]({image_dir}{plots['cost'].name})", ""]
    if results["training"]:
        parts += ["## Training comparison of small variants", "", f"Budget: {training_budget(results)}.", "",
                  md_table(*training_table(results)), ""]
        if plots.get("training"):
            parts += [f"![training curves]({image_dir}{plots['training'].name})", ""]
    parts += ["## Method", ""] + [f"- {line}" for line in method(results)] + [""]
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
        sections.append(f"<h2>{html.escape(_cost_heading(results))}</h2>" + _html_table(*cost_table(results))
                        + _img(plots.get("cost"), "cost"))
    if results["training"]:
        sections.append("<h2>Training comparison of small variants</h2>"
                        + f"<p>Budget: {html.escape(training_budget(results))}.</p>"
                        + _html_table(*training_table(results))
                        + _img(plots.get("training"), "training"))
    method_items = "".join(f"<li>{html.escape(line)}</li>" for line in method(results))
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>vitpipe report</title>"
            f"<style>{style}</style></head><body><h1>vitpipe production-readiness report</h1>"
            f"<ul>{machine}</ul><h2>Findings</h2><ul>{found}</ul>{''.join(sections)}"
            f"<h2>Method</h2><ul>{method_items}</ul></body></html>")
