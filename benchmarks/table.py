"""Write ``docs/benchmarks.md`` (tables + PNG plots) from ``benchmarks/results/*.json``.

    python benchmarks/table.py            # writes docs/benchmarks.md, docs/report.md and docs/img/*.png
    python benchmarks/table.py --stdout   # Markdown on stdout, no files written

Every number in the page comes from a JSON file a benchmark script wrote; nothing is typed
in. A speed result whose machine was overloaded when it was measured (1-minute load average
above 1.5x its cores, or a GEMM peak far below the CPU's rate) is listed as not published
instead of shown.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
DOC = ROOT / "docs" / "benchmarks.md"
IMG = ROOT / "docs" / "img"
REPORT = ROOT / "docs" / "report.md"

sys.path.insert(0, str(ROOT))  # components.report.render formats the readiness results

def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _machine(info: dict) -> str:
    parts = [f"{k}={round(v, 2) if isinstance(v, float) else v}" for k, v in info.items()
             if not isinstance(v, (dict, list))]
    return ", ".join(parts)


def data_table(d: dict) -> list[str]:
    ray, dl = d["ray_data"], d["torch_dataloader"]
    return [
        f"**Data pipeline** (`bench_data.py`; {d['what']}; {_machine(d['machine'])})",
        "",
        "| pipeline | images/s | peak memory (PSS, MiB) | processes |",
        "|---|---|---|---|",
        f"| Ray Data | {ray['images_per_s']} | {ray['peak_pss_mib']} | {ray['peak_processes']} |",
        f"| torch DataLoader(num_workers=2) | {dl['images_per_s']} | {dl['peak_pss_mib']} | {dl['peak_processes']} |",
        f"| **Ray Data / DataLoader** | **{d['speedup_ray_vs_dataloader']}×** (goal ≥ {d['goal']}×) | | |",
    ]


def blocks_table(d: dict) -> list[str]:
    rows = [f"**Ray Data block size** (`bench_blocks.py`; {d['what']}; {_machine(d['machine'])})", "",
            "| rows per block | validation pass s | epoch s | images/s | × 16-row blocks (validate / epoch) |",
            "|---|---|---|---|---|"]
    for key, r in d["by_rows_per_block"].items():
        label = f"auto ({r['block_rows']})" if key == "auto" else key
        rows.append(f"| {label} | {r['validate_s']} | {r['epoch_s']} | {r['images_per_s']} | "
                    f"{r.get('validate_speedup_vs_16', '–')}× / {r.get('epoch_speedup_vs_16', '–')}× |")
    return rows


def models_table(d: dict) -> list[str]:
    rows = [
        f"**Training step, CPU** (`bench_models.py`; {_machine(d['machine'])}; GEMM peak "
        f"measured in the run: fp32 {d['gemm_peak_tflops']['fp32']} / bf16 "
        f"{d['gemm_peak_tflops']['bf16']} TFLOP/s)",
        "",
        "| model | variant | precision | batch × px | ms/step (wall) | CPU ms/step | img/s | MFU | × eager bf16 (wall / CPU) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in d["results"]:
        if "skipped" in r:
            rows.append(f"| {r['model']} | {r['variant']} | – | – | skipped: {r['skipped']} | | | | |")
            continue
        rows.append(
            f"| {r['model']} | {r['variant']} | {r['precision']} | {r['batch_size']} × {r['img_size']} "
            f"| {r['step_ms']} | {r.get('step_cpu_ms', '–')} | {r['img_per_s']} | {r['mfu']:.3f} "
            f"| {r['speedup_vs_timm_eager_bf16']} / {r.get('cpu_time_speedup_vs_timm_eager_bf16', '–')} |"
        )
    return rows


def train_gpu_table(d: dict) -> list[str]:
    rows = [
        f"**Training step, GPU** (`bench_train_gpu.py`; {d['device']}, torch {d['torch']}, "
        "the Ray worker's step without Ray)",
        "",
        "| model | batch × px | precision | AdamW | compiled | ms/step | img/s | TFLOP/s | MFU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in d["results"]:
        rows.append(
            f"| {r['model']} | {r['batch_size']} × {r['img_size']} | {r['precision']} | {r['adamw']} "
            f"| {'yes' if r['compiled'] else 'no'} | {r['step_ms']} | {r['img_per_s']} "
            f"| {r['achieved_tflops']} | {r['mfu']:.1%} |"
        )
    return rows


def serve_table(d: dict) -> list[str]:
    rows = [
        f"**Serving** (`bench_serve.py`; model {d['model']['name']} at {d['model']['input']}, "
        f"{d['model']['image']}; "
        f"{_machine(d['machine'])})",
        "",
        "| mode | concurrency | req/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    # files written before the layouts and the gRPC data plane: split layout, actor calls
    layouts = d["serve"] if "split" in d["serve"] else {"split_actor_calls": d["serve"]}
    for layout, modes in layouts.items():
        for mode in ("batched", "unbatched"):
            for r in modes[mode]:
                rows.append(
                    f"| HTTP {layout}, {mode} | {r['concurrency']} | {r['throughput_rps']} "
                    f"| {r['p50_ms']} | {r['p99_ms']} | {r['errors']} |"
                )
        jpeg = d.get("serve_jpeg_c1_batched", {}).get(layout)
        if jpeg:
            rows.append(f"| HTTP {layout}, batched, JPEG body | 1 | {jpeg['throughput_rps']} "
                        f"| {jpeg['p50_ms']} | {jpeg['p99_ms']} | {jpeg['errors']} |")
        floor = d.get("serve_floor_get_c1", {}).get(layout)
        if floor:
            rows.append(f"| GET /v2/health/live ({layout}: Serve's floor, no work) | 1 | "
                        f"| {floor['p50_ms']} | {floor['p99_ms']} | |")
    for mode, r in d.get("model_deployment_via_handle_c32", {}).items():
        rows.append(
            f"| model deployment via handle, {mode} | {r['concurrency']} | {r['throughput_rps']} "
            f"| {r['p50_ms']} | {r['p99_ms']} | {r['errors']} |"
        )
    ip = d["in_process"]["end_to_end"]
    s = d["summary"]
    per_layout = ({k: v for k, v in s.items() if isinstance(v, dict) and k != "goals"}
                  or {"split_actor_calls": s})
    rows += [
        f"| in-process (decode + model), baseline | 1 | | {ip['p50_ms']} | {ip['p99_ms']} | |",
        *([f"| in-process, JPEG body | 1 | | {d['in_process_jpeg']['end_to_end']['p50_ms']} "
           f"| {d['in_process_jpeg']['end_to_end']['p99_ms']} | |"] if "in_process_jpeg" in d else []),
        "",
        f"Model deployment alone, batched / unbatched throughput at c=32: "
        f"{s['batched_over_unbatched_model_deployment_c32']}× (goal ≥ 2×). "
        + " ".join(
            f"{layout.capitalize()}: HTTP batched / unbatched at c=32 "
            f"{v['batched_over_unbatched_throughput_c32']}×, p50 overhead over in-process at "
            f"c=1 {v['p50_overhead_ms_c1_batched']} ms batched, "
            f"{v['p50_overhead_ms_c1_unbatched']} ms unbatched"
            + (f", {v['p50_overhead_ms_c1_batched_jpeg']} ms batched with the JPEG body"
               if "p50_overhead_ms_c1_batched_jpeg" in v else "") + " (goal ≤ 10 ms)."
            for layout, v in per_layout.items())
        + f" Errors: {s['errors']}.",
    ]
    return rows


def registry_table(d: dict) -> list[str]:
    rows = [
        f"**Registry loading** (`bench_registry.py`; {d['model']}, {d['weights_mib']} MiB; "
        f"{_machine(d['machine'])})",
        "",
        "| path | median s | × `mlflow.pyfunc.load_model` |",
        "|---|---|---|",
    ]
    for name, r in d["results"].items():
        rows.append(f"| {name} | {r['median_s']} | {d['speedup_vs_pyfunc_load'][name]} |")
    return rows


def train_table(d: dict) -> list[str]:
    """Ray Train CPU benchmark: free-form rows as the benchmark wrote them."""
    rows = [f"**Training through Ray Train, CPU** (`bench_train.py`; {_machine(d.get('machine', {}))})", ""]
    for section, value in d.items():
        if section in ("machine", "benchmark"):
            continue
        if isinstance(value, list) and value and isinstance(value[0], dict):
            keys = list(value[0])
            rows += ["", f"_{section}_", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            rows += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in value]
        elif isinstance(value, dict):
            flat = {k: v for k, v in value.items() if not isinstance(v, (dict, list))}
            if flat:
                rows += ["", f"_{section}_: " + ", ".join(f"{k}={v}" for k, v in flat.items())]
    return rows


def _by_step(curve: list[dict], key: str, points: int = 6) -> str:
    """``"250: 0.41 / 750: 0.62 / ..."``: at most ``points`` evenly spaced points, first and last kept."""
    shown = curve if len(curve) <= points else [curve[i * (len(curve) - 1) // (points - 1)] for i in range(points)]
    return " / ".join(f"{p['step']}: {p[key]}" for p in shown)


def accuracy_gpu_table(d: dict) -> list[str]:
    st = d["settings"]
    threads = f", {d['torch_threads']} thread(s)" if "cuda" not in d["device"].lower() and d.get("torch_threads") else ""
    rows = [
        f"**Time to accuracy of the demo classifiers** (`bench_accuracy_gpu.py`; {d['device']}{threads}, "
        f"{'fp32' if d['precision'] == 'None' else d['precision']}, batch {st['batch']}, lr {st['lr']}, {st['steps']} steps, "
        f"{'random flip + quarter turns' if st.get('rot90') else 'flip only'}, no Ray; "
        "val top-1 on the synthetic shapes, 5 classes)",
        "",
        "| model | synthetic images (train crops) | best val top-1 | steps to 0.90 | steps to 0.95 | val top-1 by step |",
        "|---|---|---|---|---|---|",
    ]
    for r in d["results"]:
        by_step = _by_step(r["curve"], "val_top1")
        rows.append(
            f"| {r['model']} | {r['synth_images']} ({r['train_crops']}) | {r['best_val_top1']} "
            f"| {r['steps_to_0.90'] or '–'} | {r['steps_to_0.95'] or '–'} | {by_step} |"
        )
    return rows


def detect_table(d: dict) -> list[str]:
    st = d["settings"]
    threads = f", {d['torch_threads']} thread(s)" if d.get("torch_threads") else ""
    rows = [
        f"**Time to mAP of the demo detectors** (`bench_detect_gpu.py`; {d['device']}{threads}, {d['precision']}, "
        f"{st['num_train']} synthetic images at {d['image_size']} px, batch {st['batch']}, lr {st['lr']}, "
        f"{st['steps']} steps, {d['augment']}, {d['init']}, no Ray; COCO mAP on the val split)",
        "",
        "| model | patch | matching (k) | NMS IoU | best mAP50 | best mAP | steps to mAP50 0.5 | mAP50 by step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in d["results"]:
        by_step = _by_step(r["curve"], "map50")
        model = r["model"] + (f", init {r['init']}" if r.get("init") and r["init"] != d["init"] else "")
        rows.append(f"| {model} | {r['patch_size']} | {r.get('match_repeats', 1)} | {r.get('nms_iou') or '–'} "
                    f"| {r['best_map50']} | {r['best_map']} | {r['steps_to_map50_0.5'] or '–'} | {by_step} |")
    return rows


def detect_recipe_table(d: dict) -> list[str]:
    st = d["settings"]
    rows = [
        f"**YOLOS recipe sweep** (`bench_detect_gpu.py`; {d['device']}, {d.get('torch_threads', '?')} thread(s), "
        f"{d['precision']}, yolos_demo+conv, {st['num_train']} synthetic images at {d['image_size']} px, batch "
        f"{st['batch']}, k={st['match_repeats'][0]} + NMS {st['nms_iou']}, {d['augment']}, no Ray; one change "
        "at a time against the baseline, then the winners together)",
        "",
        "| variant | steps | init | lr | [DET] tokens | eos | clip | best mAP50 | best mAP |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in d["results"]:
        init = "classifier" if r.get("init", "random") != "random" else "random"
        rows.append(f"| {r.get('variant', r['model'])} | {r.get('steps', '')} | {init} | {r.get('lr')} "
                    f"| {r.get('num_det_tokens') or 20} | {r.get('eos_coef')} | {r.get('clip')} "
                    f"| {r['best_map50']} | {r['best_map']} |")
    return rows


def nms_table(d: dict) -> list[str]:
    rows = [
        f"**NMS threshold of the demo's YOLOS** (`nms_sweep.py`; {d['device']}; {d['model']} "
        f"{d['model_config']}, step {d['step']}, {d['split']} split; one checkpoint re-evaluated, "
        "the threshold picked on the split it is scored on)",
        "",
        "| NMS IoU | mAP50 | mAP | mAP75 |",
        "|---|---|---|---|",
    ]
    rows += [f"| {r['nms_iou'] or 'none'} | {r['map50']} | {r['map']} | {r['map75']} |" for r in d["results"]]
    return rows


def predict_table(d: dict) -> list[str]:
    statistic = next((r["statistic"] for r in d["results"].values() if "statistic" in r),
                     f"best of {d['rounds']} rounds")
    rows = [f"**Batch inference** (`bench_predict.py`; {d['model']} at {d['image_size']} px, {d['precision']}, "
            f"batch {d['batch_size']}, {statistic}; {_machine(d['machine'])}). End to end "
            "includes starting the model actors; steady is the rate after the first batch. The ceiling is "
            "the most any pipeline can gain on these cores: the loop's decode + 2-thread forward per image "
            "against one decode + one 1-thread forward per core.",
            "", "| images | pipeline | images/s | steady images/s | × loop (end to end / steady) | peak PSS MiB |",
            "|---|---|---|---|---|---|"]
    for name, r in d["results"].items():
        rows.append(f"| {name} ({r['images']}) | single-process loop | {r['loop_images_per_s']} | | 1.0 | "
                    f"{r['loop_peak_pss_mib']} |")
        if "ceiling" in r:
            c = r["ceiling"]
            rows.append(f"| {name} | ceiling (decode {c['decode_ms_per_image']} ms, forward "
                        f"{c['forward_ms_per_image_1_thread']} / {c['forward_ms_per_image_2_threads']} ms "
                        f"per image on 1 / 2 threads) | | | {c['ceiling_ratio']} | |")
        for c in r["ray"]:
            rows.append(f"| {name} | Ray Data: {c['config']} | {c['images_per_s']} | {c['steady_images_per_s']} "
                        f"| {c['ratio_end_to_end']} / {c['ratio_steady']} | {r['ray_peak_pss_mib']} |")
    rows += ["", f"Goal: ≥ {d['goal_ratio']}× the loop."]
    return rows


def autoscale_table(d: dict) -> list[str]:
    s = d["summary"]
    a, ratio = s["autoscaled"], s["high_phase_autoscaled_over_baseline"]
    rows = [f"**Autoscaling under a load ramp** (`bench_autoscale.py`; {d['model']['name']} at "
            f"{d['model']['input']}, {d['settings']['ramp']}, burst {d['settings']['high_s']} s; "
            f"{_machine(d['machine'])})", "",
            "| failed requests | max model replicas | first replica asked for / running (s into the burst) "
            "| back to min after the load dropped (s) | burst: autoscaled / pinned throughput, p50, p99 |",
            "|---|---|---|---|---|",
            f"| {s['failed_requests']} | {a['max_replicas_seen']} | {a['first_replica_started_after_s']} / "
            f"{a['first_replica_added_after_s']} | {a['back_to_min_after_s']} | {ratio['throughput']}×, "
            f"{ratio['p50_latency']}×, {ratio['p99_latency']}× |"]
    if (RESULTS / "autoscale.png").is_file():
        rows += ["", "![model replicas and latency over the ramp](../benchmarks/results/autoscale.png)"]
    return rows


def bccd_contest_table(d: dict, image: str = "bench_bccd_contest.png") -> list[str]:
    """The BCCD contest: test mAP50 / mAP at the budget per contender, the goal, the curve plot."""
    st, goal = d["settings"], d["goal"]
    peers = st.get("peer_precision", "fp32")
    vitpipe = next((r.get("precision") for r in d["contenders"].get("vitpipe", {}).get("runs", [])), None)
    precision = f"peers in {peers}" + (f", vitpipe in {vitpipe} (`precision: auto`)" if vitpipe else "")
    rows = [f"**BCCD contest** (`bench_bccd.py`; random weights, {st['image_size']} px, batch {st['batch']}, "
            f"{st['budget_s']:.0f} s of training each on {st['torch_threads']} torch threads (scoring excluded), "
            f"{precision}, seeds {st['seeds']}, scored on the {st['split_scored']} split; "
            f"{_machine(d['machine'])})", "",
            "| contender | test mAP50 | test mAP | mAP50 per seed | optimizer steps | seconds |",
            "|---|---|---|---|---|---|"]
    for name, c in d["contenders"].items():
        f = c["final"]
        rows.append(f"| {c['label']} | {f['map50']} | {f['map']} | {f['map50_per_seed']} | {f['steps']} | "
                    f"{f['seconds']} |")
    if goal.get("met") is None:
        verdict = "not decided (not every contender ran)"
    else:
        verdict = (f"{'met' if goal['met'] else '**not met**'}: vitpipe {goal['vitpipe_map50']} / "
                   f"{goal['best_peer']} {goal['best_peer_map50']} = {goal['ratio']}×")
    rows += ["", f"Goal: {goal['statement']}. {verdict}."]
    if goal.get("per_seed_ratio"):
        rows += ["", f"Per seed: {goal['per_seed_ratio']}× the best peer."]
    if st.get("peers_from"):
        note = f"; {st['note']}" if st.get("note") else ""
        rows += ["", f"The peers' runs are those of `{st['peers_from']}` (same script and settings, an earlier "
                     f"run on a machine of the same kind){note}."]
    if (IMG / image).is_file():  # drawn by render()
        rows += ["", f"![test mAP50 against seconds of training, BCCD contest](img/{image})"]
    return rows


def transfer_table(d: dict, image: str = "transfer.png") -> list[str]:
    """MAE on BCCD's photos -> a ViT detector against the same detector from random weights:
    final test mAP50 per arm and seed, the two goals, the curves (drawn by the benchmark
    beside its JSON, ``image``)."""
    st = d["settings"]
    arms = list(d["seeds"][0]["arms"])
    decay = (f"layer decay {st['layer_decay']}" if st["layer_decay"] < 1.0 else "one learning rate")
    names = {"scratch": f"random weights, {st['det_steps']} steps",
             "pretrained": f"from MAE, {st['det_steps']} steps, {decay}",
             "pretrained_flat_lr": f"from MAE, {st['det_steps']} steps, one learning rate",
             "scratch_equal": "random weights, the MAE's seconds as extra steps"}
    detector = st.get("detector_name", "YOLOS-Ti").split(" (")[0]
    rows = [f"**Pretraining on the photos themselves** (`bench_transfer.py`; {detector} at 320 px, batch "
            f"{st.get('batch_size', 8)}; MAE "
            f"{st['mae_steps']} steps of 32 crops on BCCD's train + val photos, labels unused; {st['precision']}; "
            f"scored on the {st['split_scored']} split; {_machine(d['machine'])})", "",
            "| seed | MAE seconds | " + " | ".join(names.get(a, a) for a in arms) + " |",
            "|---|---|" + "---|" * len(arms)]
    for s in d["seeds"]:
        cells = []
        for a in arms:
            if a not in s["arms"]:
                cells.append("—")
                continue
            f = s["arms"][a]["final"]
            seconds = f["seconds"] + (s["mae"]["seconds"] if a.startswith("pretrained") else 0.0)
            cells.append(f"{f['map50']} ({f['steps']} steps, {seconds:.0f} s)")
        rows.append(f"| {s['seed']} | {s['mae']['seconds']:.0f} | " + " | ".join(cells) + " |")
    rows += ["", "Cells: test mAP50 at the end (detection steps, seconds of fitting with the MAE's included)."]
    for goal in d["goals"].values():
        rows.append(f"Goal: {goal['statement']}: {'met' if goal['met'] else '**not met**'} "
                    f"(per seed {goal['per_seed']}).")
    if (RESULTS / image).is_file():
        rows += ["", "![test mAP50 by detection step and by seconds, MAE vs random weights]"
                     f"(../benchmarks/results/{image})"]
    return rows


def _save_plot(fig, ax, path: Path) -> None:
    """Grid, legend, tight layout; write ``path`` (its folder made) and close the figure."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _plot_bccd_contest(d: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    for k, c in enumerate(d["contenders"].values()):
        for i, run in enumerate(c["runs"]):
            ax.plot([p["seconds"] for p in run["curve"]], [p["map50"] for p in run["curve"]], marker=".",
                    color=f"C{k}", alpha=1.0 if i == 0 else 0.5, label=c["label"] if i == 0 else None)
    ax.set_xlabel("seconds of training")
    ax.set_ylabel("test mAP50")
    ax.set_title(f"BCCD, random weights, {d['settings']['budget_s']:.0f} s each", fontsize=9)
    _save_plot(fig, ax, path)


def generic_table(d: dict, title: str | None = None) -> list[str]:
    """Any result file: its scalar fields as one line, each list of rows as a table."""
    title = title or d.get("what") or d.get("benchmark", "results")
    rows = [f"**{title}** ({_machine(d.get('machine', {})) or d.get('device', '')})", ""]
    for section, value in d.items():
        if section in ("machine", "what", "benchmark"):
            continue
        if isinstance(value, list) and value and isinstance(value[0], dict):
            keys = list(dict.fromkeys(k for r in value for k in r if not isinstance(r[k], (dict, list))))
            rows += ["", f"_{section}_", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            rows += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in value]
        elif isinstance(value, dict):
            flat = {k: v for k, v in value.items() if not isinstance(v, (dict, list))}
            if flat:
                rows += ["", f"_{section}_: " + ", ".join(f"{k}={v}" for k, v in flat.items())]
        else:
            rows += ["", f"_{section}_: {value}"]
    return rows


def readiness_table(d: dict) -> list[str]:
    """The production-readiness report's findings and tables (the full page: docs/report.md)."""
    from components.report.render import md_table, cost_table, findings, training_table, training_budget

    m = d["machine"]
    peak = d.get("gemm_peak_tflops", {})
    rows = [f"**CNN vs ViT vs transformer detectors** (`bench_readiness.py`, mode {d['mode']}; {m['cpu']}, "
            f"{m['cores']} cores, torch threads {m['threads']}, load {m.get('loadavg_at_start')} at the start, "
            f"{m.get('loadavg_at_end')} at the end; GEMM peak fp32 {peak.get('fp32')} / bf16 {peak.get('bf16', '-')} "
            f"TFLOP/s; {d.get('wall_s', d.get('elapsed_s'))} s). Full report: [report.md](report.md).", ""]
    rows += [f"- {line}" for line in findings(d)] + [""]
    if d["cost"]:
        rows += [md_table(*cost_table(d)), ""]
    if d["training"]:
        rows += [f"Training comparison of small variants ({training_budget(d)}):", "",
                 md_table(*training_table(d)), ""]
    return rows


def write_report_page(d: dict) -> None:
    """docs/report.md (and its plots in docs/img/) from the readiness results."""
    from components.report.render import markdown, plot_cost, plot_training

    IMG.mkdir(parents=True, exist_ok=True)
    plots = {"cost": plot_cost(d, IMG / "readiness_cost.png"),
             "training": plot_training(d, IMG / "readiness_training.png")}
    REPORT.write_text(markdown(d, plots, image_dir="img/"))


def overloaded(d: dict) -> str | None:
    """Why a speed result must not be published, or None."""
    m = d.get("machine", {}) if isinstance(d.get("machine"), dict) else {}
    cpus = m.get("cpus") or m.get("host_cpus") or m.get("cores")
    # Load at the start is other work; load at the end also counts the benchmark's own
    # processes (Ray workers, replicas), so it is held to a looser bound.
    for key, bound in (("loadavg_at_start", 1.5), ("load_avg_at_start", 1.5), ("load_average_1m_at_start", 1.5),
                       ("load_average_at_start", 1.5),
                       ("loadavg_at_end", 4), ("load_avg_1m_at_end", 4), ("load_average_1m_at_end", 4)):
        value = m.get(key)
        load = value[0] if isinstance(value, list) else value
        if cpus and isinstance(load, (int, float)) and load > bound * cpus:
            return f"1-minute load average {load:.1f} on {cpus} cores"
    peak = d.get("gemm_peak_tflops")
    if isinstance(peak, dict) and isinstance(peak.get("fp32"), (int, float)) and cpus:
        # a CPU core does >= ~30 GFLOP/s fp32 (AVX2 FMA at 2 GHz): far below that is contention
        if peak["fp32"] < 0.3 * 0.03 * cpus:
            return f"measured fp32 GEMM peak {peak['fp32']} TFLOP/s, far below {cpus} cores' rate"
    note = str(m.get("note", ""))
    if "other work ran" in note:
        return "other work ran on the machine during the measurement"
    return None


def plot_curves(d: dict, key: str, label: str, path: Path, title: str) -> bool:
    """Metric by step, one line per result row with a ``curve``; False if nothing to plot."""
    series = [(r.get("variant") or r.get("model"), r["curve"]) for r in d.get("results", []) if r.get("curve")]
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    for i, (name, curve) in enumerate(series):
        extra = f" ({d['results'][i].get('synth_images')} img)" if d["results"][i].get("synth_images") else ""
        ax.plot([p["step"] for p in curve], [p[key] for p in curve], marker=".", label=f"{name}{extra}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(label)
    ax.set_title(title, fontsize=9)
    _save_plot(fig, ax, path)
    return True


# Page layout: (heading, what the section answers, [(results name, script, formatter, kind)]).
# kind "speed": refused when measured on an overloaded machine; "accuracy": curves are plotted.
PAGE = [
    ("Production readiness", "CNN vs vision transformers vs transformer detectors: the inference cost of "
     "the real-size models on this CPU, fp32 and bf16, and a training comparison of small variants.", [
        ("readiness", "bench_readiness.py", readiness_table, "speed"),
    ]),
    ("Data pipeline", "Ray Data against a torch DataLoader doing the same work, and the block size.", [
        ("data", "bench_data.py", data_table, "speed"),
        ("data_blocks", "bench_blocks.py --root .demo/synth", blocks_table, "speed"),
        ("decode", "bench_decode.py", generic_table, "speed"),
    ]),
    ("Training speed", "Which precision is faster on this CPU (the rule `precision: auto` follows), our "
     "training step against timm eager, through Ray Train, on CPU and GPU.", [
        ("precision", "bench_precision.py", generic_table, "speed"),
        ("models", "bench_models.py", models_table, "speed"),
        ("train", "bench_train.py", train_table, "speed"),
        ("train_gpu", "bench_train_gpu.py", train_gpu_table, "speed"),
    ]),
    ("Accuracy within a budget", "Validation accuracy by optimizer step on the synthetic shapes "
     "(accuracy by step does not depend on machine load; seconds are not reported).", [
        ("accuracy_gpu", "bench_accuracy_gpu.py", accuracy_gpu_table, "accuracy"),
        ("accuracy_gpu_rot90", "bench_accuracy_gpu.py --rot90", accuracy_gpu_table, "accuracy"),
        ("accuracy_cpu_stem", "bench_accuracy_gpu.py --threads 1 --models vit_demo+conv vit_demo ...",
         accuracy_gpu_table, "accuracy"),
        ("accuracy_cpu_stem_long", "bench_accuracy_gpu.py --threads 1 --steps 1800 --num-train 4000 "
         "--models vit_demo+conv --precision fp32 ...", accuracy_gpu_table, "accuracy"),
        ("detect_cpu", "bench_detect_gpu.py", detect_table, "accuracy"),
        ("detect_cpu_o2m", "bench_detect_gpu.py --threads 1 --models yolos_demo+conv --match-repeats 1 3 ...",
         detect_table, "accuracy"),
        ("detect_cpu_recipe", "bench_detect_gpu.py --threads 1 --models yolos_demo+conv --match-repeats 3 ...",
         detect_recipe_table, "table"),
        ("detect_demo_nms", "nms_sweep.py CHECKPOINT --data-root .demo/synth", nms_table, "table"),
        ("tune_yolos", "bench_tune.py", generic_table, "table"),
    ]),
    ("Real photographs (BCCD)", "Our best detector against torchvision's detectors, every one "
     "from random weights and trained for the same seconds on the same cores, scored on BCCD's test photos; "
     "and what our own pretraining on the photos buys a ViT detector. Seconds are part of the measure, so a "
     "result measured under load is not published.", [
        ("bccd_contest", "bench_bccd.py", bccd_contest_table, "speed"),
        ("bccd_contest_bf16", "bench_bccd.py --peer-precision bf16 --ckpt-every 40 "
         "--out benchmarks/results/bccd_contest_bf16.json",
         lambda d: bccd_contest_table(d, "bench_bccd_contest_bf16.png"), "speed"),
        ("bccd_contest_lwdetr", "bench_bccd.py --config pipelines/configs/detect_bccd_lwdetr.yaml "
         "--peer-precision bf16 --ckpt-every 40 --peers-from benchmarks/results/bccd_contest_bf16.json "
         "--out benchmarks/results/bccd_contest_lwdetr.json",
         lambda d: bccd_contest_table(d, "bench_bccd_contest_lwdetr.png"), "speed"),
        ("transfer_lwdetr", "bench_transfer.py --detector lwdetr --precision bf16 --det-steps 300 --ckpt-every 100",
         lambda d: transfer_table(d, "transfer_lwdetr.png"), "speed"),
        ("transfer", "bench_transfer.py", transfer_table, "speed"),
    ]),
    ("Inference", "Offline batch inference, exported models and the model registry.", [
        ("predict", "bench_predict.py", predict_table, "speed"),
        ("export", "bench_export.py",
         lambda d: generic_table(d, "ONNX export: PyTorch eager vs onnxruntime, batch-1 latency and batch-32 "
                                    "throughput ratios (`bench_export.py`)"), "speed"),
        ("registry", "bench_registry.py", registry_table, "speed"),
    ]),
    ("Serving", "Ray Serve over HTTP against the same model in-process, and autoscaling under a ramp.", [
        ("serve", "bench_serve.py", serve_table, "speed"),
        ("serve_vit_tiny_patch16_224_64px", "bench_serve.py --model vit_tiny_patch16_224 --img-size 64",
         serve_table, "speed"),
        ("serve_vit_tiny_patch16_224", "bench_serve.py --model vit_tiny_patch16_224", serve_table, "speed"),
        ("autoscale", "bench_autoscale.py", autoscale_table, "speed"),
    ]),
]


def render(write_images: bool) -> str:
    out = ["# Benchmarks", "",
           "Generated by `python benchmarks/table.py` from `benchmarks/results/*.json`; each "
           "script in `benchmarks/` measures its baseline in the same run. Every table names "
           "the machine it was measured on.", ""]
    missing: list[str] = []
    for heading, intro, sections in PAGE:
        body: list[str] = []
        for name, script, fmt, kind in sections:
            d = _load(name)
            if d is None:
                missing.append(f"`{name}` (`python benchmarks/{script}`)")
                continue
            why = overloaded(d) if kind == "speed" else None
            if why:
                missing.append(f"`{name}` (`python benchmarks/{script}`): measured with {why}; "
                               "to be re-measured on a quiet machine")
                continue
            if name.startswith("bccd_contest") and write_images:
                _plot_bccd_contest(d, IMG / f"bench_{name}.png")
            body += fmt(d) + [""]
            if name == "readiness" and write_images:
                write_report_page(d)
            if kind == "accuracy":
                key, label = ("map50", "mAP50") if name.startswith("detect") else ("val_top1", "val top-1")
                png = IMG / f"bench_{name}.png"
                title = f"{name}: {d.get('device', '')}"
                if (plot_curves(d, key, label, png, title) if write_images else png.is_file()):
                    body += [f"![{label} by step, {name}](img/{png.name})", ""]
        if body:
            out += [f"## {heading}", "", intro, ""] + body
    if missing:
        out += ["## Not published", "",
                "Results without a file, or measured on a machine too loaded to publish:", ""]
        out += [f"- {m}" for m in missing] + [""]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stdout", action="store_true", help="print the Markdown; write no files")
    args = ap.parse_args()
    text = render(write_images=not args.stdout)
    if args.stdout:
        sys.stdout.write(text)
    else:
        DOC.write_text(text)
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
