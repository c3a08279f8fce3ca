"""``make demo``: the whole vitpipe pipeline on this machine, through the doors a cluster uses.

    python -m pipelines.demo [--tiny] [--keep] [--config pipelines/configs/demo.yaml] [key=value ...]

1. starts (or reuses) an ``mlflow server`` and a Ray head (``ray start --head``), both on
   127.0.0.1 with free ports, state under ``<workdir>`` (default ``.demo``;
   :mod:`pipelines.dev_services`);
2. writes the embedded synthetic dataset (kept for the next run);
3. checks the cluster with ``vitpipe preflight`` (through the dashboard, as a Ray job);
4. submits the chain with ``ray job submit --working-dir .``: one job, ``python -m
   pipelines.chain`` (:mod:`pipelines.chain`), runs pretrain (ViT) → fine-tune → YOLOS
   detection, each registering its model, then the promotion gate for each of them, then
   the BCCD stage (an LW-DETR detector on real microscope photographs at ``bccd_root``:
   trained, gated as ``bccd-detector``, scored on BCCD's test list; skipped with one line
   when that folder is missing); the terminal shows one progress line per stage (redrawn in
   place on a TTY) and each stage's result, the rest of the job's output goes to
   ``<workdir>/demo.log``;
5. deploys Serve from the registry with ``serve deploy`` (the repository's serve.yaml, bound
   to 127.0.0.1 on a free port, plus a ``bccd`` application under ``/bccd`` serving
   ``bccd-detector@champion``), sends real images to ``/v1/classify`` and ``/v1/detect``
   and one BCCD test photograph to ``/bccd/v1/detect``, and prints the answers;
6. writes the quick production-readiness report (logged to MLflow) and prints where to look;
7. stops Ray and MLflow (their own process groups only) unless ``KEEP=1`` / ``--keep``
   (``python -m pipelines.demo stop`` stops them later).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
import yaml
from pydantic import Field

from components.core.config import ConfigError, StrictModel, load_config
from components.serving.settings import SERVE_NODE_ENV
from pipelines.dev_services import (ServiceError, Services, free_port, ray_cli, ray_env, say, serve_cli,
                                    use_demo_token)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "pipelines" / "configs" / "demo.yaml"
TINY_CONFIG = REPO / "pipelines" / "configs" / "demo_tiny.yaml"
# A progress line of the chain's output (components.training.progress.Tick.line)
PROGRESS_LINE = re.compile(r"^\[[^\]\s]+\] step \d+/\d+")
BCCD_ROOT_ENV = "VITPIPE_BCCD_ROOT"  # overrides the demo's bccd_root
BCCD_PREFIX = "/bccd"                # the Serve application of the BCCD detector


# ----------------------------------------------------------------------------- config
class SynthSection(StrictModel):
    seed: int = 0
    num_train: int = Field(320, ge=8)
    num_val: int = Field(80, ge=4)
    image_size: int = Field(96, ge=32)


class RaySection(StrictModel):
    num_cpus: int = Field(6, ge=1)
    object_store_memory: int = Field(1_000_000_000, ge=100_000_000)
    # Parallel data tasks per dataset (data.concurrency of every stage). None: this machine's
    # cores. num_cpus oversubscribes them (room for Serve's replicas later), and each data
    # task beyond the cores only starts one more worker process (~4 s of imports each).
    data_concurrency: int | None = Field(None, ge=1)

    def stage_data_concurrency(self) -> int:
        return self.data_concurrency or max(1, os.cpu_count() or 1)


class ServeSection(StrictModel):
    config: str = "pipelines/configs/serve.yaml"
    ready_timeout_s: float = Field(420.0, gt=0)
    bccd_score_threshold: float = Field(0.25, ge=0, le=1)  # the BCCD detector's lowest box score


class ReportSection(StrictModel):
    enabled: bool = True
    quick: bool = True


class DemoConfig(StrictModel):
    workdir: str = ".demo"
    synth: SynthSection = Field(default_factory=SynthSection)
    ray: RaySection = Field(default_factory=RaySection)
    chain: str = "pipelines/configs/chain_demo.yaml"  # the chain job's config (pipelines.chain)
    chain_overrides: list[str] = Field(default_factory=list)
    serve: ServeSection = Field(default_factory=ServeSection)
    requests_per_task: int = Field(3, ge=1)
    report: ReportSection = Field(default_factory=ReportSection)
    # The BCCD photographs (Pascal VOC folder) of the chain's bccd stage; relative to the
    # repository; $VITPIPE_BCCD_ROOT wins when set. Missing: the stage is skipped.
    bccd_root: str = "../shared/data/bccd/BCCD"

    def bccd_path(self) -> Path:
        path = Path(os.environ.get(BCCD_ROOT_ENV) or self.bccd_root).expanduser()
        return path if path.is_absolute() else (REPO / path).resolve()


class DemoError(RuntimeError):
    """A demo step failed; the message says which and where its log is."""


# ----------------------------------------------------------------------------- steps
def synthesize_data(cfg: SynthSection, root: Path) -> Path:
    from components.data.synth import SynthConfig, synthesize

    stamp = root / "vitpipe-synth.json"
    wanted = cfg.model_dump()
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        say(f"reusing the synthetic dataset in {root}")
        return root
    if root.exists():
        shutil.rmtree(root)
    synthesize(root, SynthConfig(**wanted), workers=os.cpu_count() or 1)
    stamp.write_text(json.dumps(wanted))
    say(f"wrote {cfg.num_train} train + {cfg.num_val} val synthetic images to {root}")
    return root


def echo(line: str) -> None:
    print(f"    {line}", end="", flush=True)


# Lines of Ray's, MLflow's and the logging module's own records: the log file keeps them.
_LOG_RECORD = re.compile(r"^\s*(\d{4}-\d\d-\d\d[ T]\d\d:\d\d|\[\d{4}-\d\d-\d\d |\(\w+ pid=|🏃|🧪)")


def echo_results(line: str) -> None:
    """Echo a line unless it is a log record (timestamped Ray/MLflow/logging output)."""
    if line.strip() and not _LOG_RECORD.match(line):
        echo(line)


def run_logged(cmd: list[str], *, env: dict[str, str], log_path: Path, what: str,
               timeout_s: float = 3600, show=echo) -> str:
    """Run ``cmd``, keep its output in ``log_path`` and ``show`` each line (default: echo it);
    raise DemoError on failure."""
    lines: list[str] = []
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, cwd=REPO, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        try:
            for line in proc.stdout:
                log.write(line)
                lines.append(line)
                show(line)
                if time.monotonic() > deadline:
                    raise DemoError(f"{what} took longer than {timeout_s:.0f}s; log: {log_path}")
            proc.wait()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
    if proc.returncode != 0:
        if show is not echo:  # the output was filtered: the end of it says what went wrong
            print("".join(lines[-40:]), file=sys.stderr, flush=True)
        raise DemoError(f"{what} failed (exit {proc.returncode}); log: {log_path}")
    return "".join(lines)


def preflight(head: dict, storage: Path, serve_config: Path, log: Path) -> None:
    code = "import sys; from components.cli.main import main; sys.exit(main())"
    run_logged([sys.executable, "-c", code, "preflight", "--address", head["dashboard"],
                "--storage-path", str(storage), "--serve-config", str(serve_config), "--timeout", "120"],
               env=ray_env(), log_path=log, what="preflight", timeout_s=600, show=echo_results)


class JobConsole:
    """What the terminal shows of the chain job's output; the log keeps all of it.

    ``[chain]`` lines (each stage's result) and progress lines; on a TTY a stage's progress
    line is redrawn in place (the job then sends one per report), elsewhere the job's own
    periodic lines pass through. Ray's and the stages' logging stay in the log.
    """

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._open = False

    @property
    def progress_mode(self) -> str:
        """The job's ``VITPIPE_PROGRESS``: every report to redraw here, or its periodic lines."""
        return "every" if self.tty else "plain"

    def __call__(self, line: str) -> None:
        text = line.rstrip("\r\n")
        if PROGRESS_LINE.match(text):
            if self.tty:
                width = shutil.get_terminal_size().columns - 5
                self._write(f"\r    {text[:width]}\x1b[K")
                self._open = True
            else:
                self._write(f"    {text}\n")
        elif text.startswith("[chain]"):
            self.end_line()
            self._write(f"    {text}\n")

    def end_line(self) -> None:
        if self._open:
            self._write("\n")
            self._open = False

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def chain_command(cfg: DemoConfig, *, data: Path, storage: Path, tag: str, out: Path) -> list[str]:
    """``python -m pipelines.chain`` with this demo's data, storage, run tag and model cache."""
    return ["python", "-m", "pipelines.chain", "--config", cfg.chain, "--out", str(out / f"chain-{tag}.json"),
            f"data_root={data}", f"storage_path={storage}", f"tag={tag}",
            f"data_concurrency={cfg.ray.stage_data_concurrency()}", f"cache_dir={out / 'model-cache'}",
            f"bccd_root={cfg.bccd_path()}", *cfg.chain_overrides]


def submit_chain(head: dict, command: list[str], env_vars: dict[str, str], tag: str, log: Path) -> dict:
    """``ray job submit`` the chain; its results as the job wrote them (``--out``)."""
    console = JobConsole()
    runtime_env = {"working_dir": ".", "env_vars": {**env_vars, "VITPIPE_PROGRESS": console.progress_mode},
                   "excludes": [".git", ".venv", ".demo", "*.egg-info", "benchmarks/results"]}
    try:
        run_logged(ray_cli("job", "submit", "--address", head["dashboard"], "--submission-id",
                           f"vitpipe-demo-{tag}", "--runtime-env-json", json.dumps(runtime_env),
                           "--entrypoint-num-cpus", "0", "--", *command),
                   env=ray_env(), log_path=log, what="the pipeline job", timeout_s=3600, show=console)
    finally:
        console.end_line()
    return json.loads(Path(command[command.index("--out") + 1]).read_text())


def bccd_application(registered_name: str, base: dict, score_threshold: float) -> dict:
    """A Serve application under ``/bccd``: ``build_app`` with only a detector,
    ``registered_name@champion`` (one replica each), its model and ingress settings those of
    ``base`` (serve.yaml's application) but for the boxes' ``score_threshold``."""
    user = {d.get("name"): dict(d.get("user_config") or {}) for d in base.get("deployments", [])}
    model = {k: v for k, v in user.get("detector", {}).items() if k != "model_uri"}
    return {"name": "bccd", "route_prefix": BCCD_PREFIX, "import_path": "components.serving.app:build_app",
            "runtime_env": dict(base.get("runtime_env") or {}),
            "args": {"classifier_uri": None, "detector_uri": f"models:/{registered_name}@champion",
                     "replicas": 1, "model_settings": {**model, "score_threshold": score_threshold},
                     "ingress_settings": user.get("ingress", {})}}


def demo_serve_config(src: Path, *, port: int, grpc_port: int, env_vars: dict[str, str],
                      bccd_model: str | None = None, bccd_score_threshold: float = 0.25) -> dict:
    """serve.yaml as the repository keeps it, bound to 127.0.0.1:port, with the demo's env;
    with ``bccd_model`` (a registered name) also the ``/bccd`` application serving it."""
    config = yaml.safe_load(src.read_text())
    if bccd_model is not None and config.get("applications"):
        config["applications"].append(bccd_application(bccd_model, config["applications"][0],
                                                       bccd_score_threshold))
    config["http_options"] = {**(config.get("http_options") or {}), "host": "127.0.0.1", "port": port}
    if "grpc_options" in config:
        config["grpc_options"] = {**config["grpc_options"], "port": grpc_port}
    for app in config.get("applications", []):
        runtime_env = dict(app.get("runtime_env") or {})
        runtime_env["env_vars"] = {**(runtime_env.get("env_vars") or {}), **env_vars}
        app["runtime_env"] = runtime_env
        for deployment in app.get("deployments", []):
            scaling = deployment.get("autoscaling_config")
            if scaling:  # a laptop-sized ceiling
                scaling["max_replicas"] = min(int(scaling.get("max_replicas", 1)), 2)
    return config


def deploy_serve(services: Services, head: dict, cfg: ServeSection, env_vars: dict[str, str], log: Path,
                 bccd_model: str | None = None) -> str:
    rec = services.state.get("serve") or {}
    port = rec.get("port") or free_port()
    config = demo_serve_config(REPO / cfg.config, port=port, grpc_port=rec.get("grpc_port") or free_port(),
                               env_vars=env_vars, bccd_model=bccd_model,
                               bccd_score_threshold=cfg.bccd_score_threshold)
    path = services.workdir / "serve.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    services.state["serve"] = {"port": port, "grpc_port": config.get("grpc_options", {}).get("port")}
    services.save()
    run_logged(serve_cli("deploy", str(path), "--address", head["dashboard"]), env=ray_env(), log_path=log,
               what="serve deploy", timeout_s=300, show=lambda line: None)  # readiness is shown next
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + cfg.ready_timeout_s
    probes = [f"{url}/healthz"] + ([f"{url}{BCCD_PREFIX}/healthz"] if bccd_model else [])
    while True:
        try:
            if all(requests.get(probe, timeout=10).status_code == 200 for probe in probes):
                return url
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            status = subprocess.run(serve_cli("status", "--address", head["dashboard"]), env=ray_env(),
                                    capture_output=True, text=True, timeout=60).stdout
            raise DemoError(f"Serve was not healthy at {url}/healthz within {cfg.ready_timeout_s:.0f}s:\n{status}")
        time.sleep(2.0)


def _content_type(path: Path) -> str:
    return {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}[path.suffix.lower()]


def query_serve(url: str, data: Path, n: int) -> dict[str, Any]:
    """Send real val images to both endpoints; print and return the answers."""
    answers: dict[str, Any] = {"models": requests.get(f"{url}/v1/models", timeout=30).json(),
                               "classify": [], "detect": []}
    say(f"GET {url}/v1/models -> {json.dumps(answers['models'])[:400]}")
    per_class = [sorted(d.iterdir())[0] for d in sorted((data / "imagefolder" / "val").iterdir()) if any(d.iterdir())]
    cls_images = per_class[:n]
    det_images = sorted((data / "images" / "val").iterdir())[:n]
    for route, images in (("classify", cls_images), ("detect", det_images)):
        for image in images:
            resp = requests.post(f"{url}/v1/{route}", data=image.read_bytes(),
                                 headers={"Content-Type": _content_type(image)}, timeout=120)
            if resp.status_code != 200:
                raise DemoError(f"POST /v1/{route} {image.name}: HTTP {resp.status_code} {resp.text[:300]}")
            body = resp.json()
            answers[route].append({"image": str(image.relative_to(data)), "answer": body})
            say(f"POST /v1/{route} {image.relative_to(data)} -> {_summarize(route, body)}")
    return answers


def bccd_test_photo(root: Path) -> Path:
    """The first photograph of BCCD's test list."""
    first = (root / "ImageSets" / "Main" / "test.txt").read_text().split()[0]
    return root / "JPEGImages" / f"{first}.jpg"


def query_bccd(url: str, root: Path) -> dict[str, Any]:
    """Send one BCCD test photograph to the BCCD detector; print its boxes (class, score,
    xyxy in the photograph's own pixels) and the count per class; return the answer."""
    photo = bccd_test_photo(root)
    resp = requests.post(f"{url}{BCCD_PREFIX}/v1/detect", data=photo.read_bytes(),
                         headers={"Content-Type": _content_type(photo)}, timeout=120)
    if resp.status_code != 200:
        raise DemoError(f"POST {BCCD_PREFIX}/v1/detect {photo.name}: HTTP {resp.status_code} {resp.text[:300]}")
    body = resp.json()
    dets = body["detections"]
    counts: dict[str, int] = {}
    for det in dets:
        counts[det["label"]] = counts.get(det["label"], 0) + 1
    size = body["image"]
    say(f"POST {BCCD_PREFIX}/v1/detect {photo.name} ({size['width']}x{size['height']}) -> "
        f"{body['model']['name']} v{body['model']['version']}: {len(dets)} box(es)"
        f"{': ' + ', '.join(f'{n} {label}' for label, n in sorted(counts.items())) if counts else ''}")
    for det in sorted(dets, key=lambda d: -d["score"])[:10]:
        say(f"    {det['label']:<9} {det['score']:.2f}  [{', '.join(f'{v:.0f}' for v in det['box'])}]")
    if len(dets) > 10:
        say(f"    ... {len(dets) - 10} more")
    return {"image": str(photo), "answer": body, "counts": counts}


def _summarize(route: str, body: dict) -> str:
    if route == "classify":
        preds = body.get("predictions") or body.get("labels") or body.get("top_k") or []
        if isinstance(preds, list) and preds and isinstance(preds[0], dict):
            return ", ".join(f"{p.get('label')} {float(p.get('score', 0)):.2f}" for p in preds[:3])
        return json.dumps(body)[:200]
    dets = body.get("detections") or body.get("boxes") or []
    if isinstance(dets, list):
        shown = "; ".join(f"{d.get('label')} {float(d.get('score', 0)):.2f} "
                          f"[{', '.join(f'{v:.0f}' for v in d.get('box', d.get('bbox', [])))}]"
                          for d in dets[:3] if isinstance(d, dict))
        return f"{len(dets)} box(es){': ' + shown if shown else ''}"
    return json.dumps(body)[:200]


def write_report(data: Path, out: Path, tracking_uri: str, head: dict, quick: bool, log: Path) -> Path:
    code = "import sys; from components.cli.main import main; sys.exit(main())"
    # The quick report trains one short epoch per family on a small set of its own (48 images):
    # on the demo's 4,000 images that epoch alone took ~15 s per family.
    args = [sys.executable, "-c", code, "report", "--out", str(out), "--tracking-uri", tracking_uri]
    args += ["--quick"] if quick else ["--data-root", str(data)]
    run_logged(args, env=ray_env({"RAY_ADDRESS": head["gcs_address"]}), log_path=log, what="the report",
               timeout_s=1800, show=echo_results)
    return out / "report.html"


# ----------------------------------------------------------------------------- main
def run_demo(cfg: DemoConfig, *, keep: bool) -> dict[str, Any]:
    started = time.monotonic()
    workdir = Path(cfg.workdir)
    if not workdir.is_absolute():
        workdir = REPO / workdir
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "demo.log"
    use_demo_token(workdir)
    services = Services(workdir)
    summary: dict[str, Any] = {"workdir": str(workdir)}
    try:
        mlflow_uri = services.mlflow()
        cache = workdir / "model-cache"
        # The registry URI too: MLflow reads MLFLOW_REGISTRY_URI before the tracking URI, and
        # one inherited from the caller's environment would send Serve to another registry.
        env_vars = {"MLFLOW_TRACKING_URI": mlflow_uri, "MLFLOW_REGISTRY_URI": mlflow_uri,
                    "VITPIPE_MODEL_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
        head = services.ray(num_cpus=cfg.ray.num_cpus, object_store_memory=cfg.ray.object_store_memory,
                            env_for_head={**env_vars, **SERVE_NODE_ENV})
        data = synthesize_data(cfg.synth, workdir / "synth")
        storage = workdir / "runs"
        storage.mkdir(exist_ok=True)

        say("preflight: versions, shared storage, serve config (as a Ray job)")
        preflight(head, storage, REPO / cfg.serve.config, log)

        tag = time.strftime("%Y%m%d-%H%M%S")
        command = chain_command(cfg, data=data, storage=storage, tag=tag, out=workdir)
        say("ray job submit: pretrain -> finetune -> detect -> promote (pretrained and fine-tuned classifier, "
            f"detector) -> bccd (train, promote, test); job output in {log}")
        t0 = time.monotonic()
        chain = submit_chain(head, command, env_vars, tag, log)
        summary["pipeline_s"] = round(time.monotonic() - t0, 1)
        summary["pipeline"] = {name: {k: v for k, v in res.items() if k in (
            "registered_version", "metrics", "seconds", "decision", "candidate", "champion", "alias",
            "model", "test_split", "test_metrics", "skipped")}
            for name, res in chain.items()}
        bccd = chain.get("promote-bccd")  # the gate ran: bccd-detector@champion exists
        if "bccd" in chain and "test_metrics" in chain["bccd"]:
            say(f"BCCD test mAP50: {float(chain['bccd']['test_metrics']['map50']):.4f} "
                f"({chain['bccd']['test_metrics'].get('num_images')} test photos)")

        say("serve deploy: the @champion models from the registry"
            + (f" (and {bccd['model']}@champion under {BCCD_PREFIX})" if bccd else ""))
        t0 = time.monotonic()
        url = deploy_serve(services, head, cfg.serve, env_vars, log, bccd_model=bccd["model"] if bccd else None)
        summary["serve_ready_s"] = round(time.monotonic() - t0, 1)
        summary["serve_url"] = url
        summary["answers"] = query_serve(url, data, cfg.requests_per_task)
        if bccd:
            summary["answers"]["bccd"] = query_bccd(url, cfg.bccd_path())

        if cfg.report.enabled:
            say("report: production-readiness comparison (logged to MLflow)")
            summary["report"] = str(write_report(data, workdir / "report", mlflow_uri, head, cfg.report.quick, log))
        summary["mlflow_uri"] = mlflow_uri
        summary["dashboard"] = head["dashboard"]
        summary["seconds"] = round(time.monotonic() - started, 1)
        (workdir / "demo-summary.json").write_text(json.dumps(summary, indent=1, default=str))
        print()
        say(f"done in {summary['seconds']:.0f}s. Where to look:")
        say(f"  MLflow UI (runs, registry, @champion): {mlflow_uri}")
        say(f"  Serve: {url}/v1/classify, {url}/v1/detect, {url}/v1/models, {url}/v2"
            + (f", {url}{BCCD_PREFIX}/v1/detect" if bccd else ""))
        say(f"  Ray dashboard: {head['dashboard']}")
        if "report" in summary:
            say(f"  report: {summary['report']} (and {Path(summary['report']).with_suffix('.md')})")
        say(f"  logs: {log}")
        return summary
    finally:
        if keep:
            say("KEEP=1: Ray, Serve and MLflow keep running; the next run reuses them "
                f"(stop: python -m pipelines.dev_services stop --workdir {workdir})")
        else:
            services.stop()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "stop":
        from pipelines.dev_services import main as services_main

        return services_main(argv)
    parser = argparse.ArgumentParser(prog="python -m pipelines.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help=f"demo config (default {DEFAULT_CONFIG.relative_to(REPO)})")
    parser.add_argument("--tiny", action="store_true", help=f"CI size ({TINY_CONFIG.relative_to(REPO)})")
    parser.add_argument("--keep", action="store_true", help="leave the services running (also KEEP=1)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides of the demo config")
    args = parser.parse_args(argv)
    path = args.config or (TINY_CONFIG if args.tiny else DEFAULT_CONFIG)
    keep = args.keep or os.environ.get("KEEP", "") not in ("", "0")
    try:
        cfg = load_config(DemoConfig, path, args.overrides)
        run_demo(cfg, keep=keep)
    except (ConfigError, DemoError, ServiceError) as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 1 if isinstance(err, (DemoError, ServiceError)) else 2
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
