"""``make demo``: the whole vitpipe pipeline on this machine, through the doors a cluster uses.

    python -m pipelines.demo [--tiny] [--keep] [--config pipelines/configs/demo.yaml] [key=value ...]

1. starts (or reuses) an ``mlflow server`` and a Ray head (``ray start --head``), both on
   127.0.0.1 with free ports, state under ``<workdir>`` (default ``.demo``);
2. writes the embedded synthetic dataset (kept for the next run);
3. checks the cluster with ``vitpipe preflight`` (through the dashboard, as a Ray job);
4. submits the pipeline with ``ray job submit --working-dir .``: one job runs
   pretrain (ViT) → fine-tune → YOLOS detection (from the pretrained ViT unless the stage
   says ``init_from_pretrain: false``), each registering
   its model, then the promotion gate for each of them: the pretrained classifier, the
   fine-tuned one against the @champion of the two so far, and the detector
   (``python -m pipelines.demo chain``, below);
5. deploys Serve from the registry with ``serve deploy`` (the repository's serve.yaml, bound
   to 127.0.0.1 on a free port), sends real images to ``/v1/classify`` and ``/v1/detect`` and
   prints the answers;
6. writes the quick production-readiness report (logged to MLflow) and prints where to look;
7. stops Ray and MLflow (their own process groups only) unless ``KEEP=1`` / ``--keep``.

Ray auth: ``ray start --head`` turns on token authentication (Ray >= 2.52); the demo keeps
it on with a token of its own (``<workdir>/ray_auth_token``, made once, mode 0600) that the
head, the Ray CLI calls, the job's drivers and the Serve replicas all get through
``RAY_AUTH_MODE=token`` + ``RAY_AUTH_TOKEN_PATH``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
import yaml
from pydantic import Field

from components.core.config import ConfigError, StrictModel, load_config
from components.core.rayjobs import HEAD_PORTS, head_start_args, wait_for_job_agent
from components.serving.settings import SERVE_NODE_ENV

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "pipelines" / "configs" / "demo.yaml"
TINY_CONFIG = REPO / "pipelines" / "configs" / "demo_tiny.yaml"
STAGES = ("pretrain", "finetune", "detect")


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


class StageSection(StrictModel):
    config: str
    overrides: list[str] = Field(default_factory=list)
    # finetune / detect: start from the pretrain stage's checkpoint (model.init_from)
    init_from_pretrain: bool = True


class ServeSection(StrictModel):
    config: str = "pipelines/configs/serve.yaml"
    ready_timeout_s: float = Field(420.0, gt=0)


class ReportSection(StrictModel):
    enabled: bool = True
    quick: bool = True


class DemoConfig(StrictModel):
    workdir: str = ".demo"
    synth: SynthSection = Field(default_factory=SynthSection)
    ray: RaySection = Field(default_factory=RaySection)
    stages: dict[str, StageSection]
    promote: StageSection
    serve: ServeSection = Field(default_factory=ServeSection)
    requests_per_task: int = Field(3, ge=1)
    report: ReportSection = Field(default_factory=ReportSection)


class DemoError(RuntimeError):
    """A demo step failed; the message says which and where its log is."""


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


# ----------------------------------------------------------------------------- processes
def _free_port() -> int:
    from components.tracking.server import free_port

    return free_port()


def _alive(pid: int | None) -> bool:
    """``pid`` runs (a zombie counts as gone; one that is our child is reaped)."""
    if not pid:
        return False
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _ours(pid: int, marker: str) -> bool:
    """The process ``pid`` is one this demo started (its command line names ``marker``)."""
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False


def stop_group(pid: int | None, marker: str, timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL, the process group that ``pid`` leads, if it is ours."""
    if not _alive(pid) or not _ours(pid, marker):
        return
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    if pgid != pid:  # we start every service as a session leader; anything else is not ours
        return
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    try:  # whatever of the group outlived its leader
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _alive(pid)  # reap


def use_demo_token(workdir: Path) -> Path:
    """Token auth with the demo's own token file (created once); exported to every child."""
    import secrets

    path = workdir / "ray_auth_token"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    return path


def ray_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the Ray CLI and the head: token auth on, this venv first on PATH."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    env.update(extra or {})
    return env


def ray_cli(*args: str) -> list[str]:
    exe = Path(sys.executable).parent / "ray"
    return [str(exe) if exe.exists() else "ray", *args]


def serve_cli(*args: str) -> list[str]:
    exe = Path(sys.executable).parent / "serve"
    return [str(exe) if exe.exists() else "serve", *args]


# ----------------------------------------------------------------------------- services
class Services:
    """The demo's MLflow server and Ray head, recorded in ``<workdir>/services.json``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.path = workdir / "services.json"
        self.state: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def save(self) -> None:
        self.path.write_text(json.dumps(self.state, indent=1))

    # MLflow ---------------------------------------------------------------------------
    def mlflow(self) -> str:
        rec = self.state.get("mlflow") or {}
        if rec and _alive(rec.get("pid")) and _healthy(f"{rec['uri']}/health"):
            say(f"reusing mlflow server at {rec['uri']}")
            return rec["uri"]
        if rec:
            stop_group(rec.get("pid"), "mlflow")
        from components.tracking.server import MlflowServer

        server = MlflowServer(root=self.workdir / "mlflow").start()
        self.state["mlflow"] = {"pid": server.process.pid, "uri": server.uri}
        self.save()
        say(f"started mlflow server at {server.uri} (pid {server.process.pid})")
        return server.uri

    # Ray ------------------------------------------------------------------------------
    def ray(self, cfg: RaySection, env_for_head: dict[str, str]) -> dict[str, Any]:
        rec = self.state.get("ray") or {}
        if rec and _alive(rec.get("pid")) and _answers(f"{rec['dashboard']}/api/version"):
            say(f"reusing Ray head at {rec['gcs_address']} (dashboard {rec['dashboard']})")
            return rec
        if rec:
            stop_group(rec.get("pid"), "ray")
        # Ray's socket paths must stay short: a temp dir named after this workdir.
        tag = hashlib.sha1(str(self.workdir.resolve()).encode()).hexdigest()[:8]
        temp_dir = Path(tempfile.gettempdir()) / f"vitpipe-ray-{tag}"
        ports = {name: _free_port() for name in HEAD_PORTS}
        log = open(self.workdir / "ray-head.log", "ab")
        cmd = ray_cli(*head_start_args(ports, num_cpus=cfg.num_cpus, temp_dir=str(temp_dir),
                                       object_store_memory=cfg.object_store_memory))
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ray_env(env_for_head),
                                start_new_session=True, cwd=REPO)
        rec = {"pid": proc.pid, "gcs_address": f"127.0.0.1:{ports['gcs']}",
               "dashboard": f"http://127.0.0.1:{ports['dashboard']}", "temp_dir": str(temp_dir)}
        self.state["ray"] = rec
        self.state.pop("serve", None)
        self.save()
        deadline = time.monotonic() + 180
        while not _answers(f"{rec['dashboard']}/api/version"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise DemoError(f"the Ray head did not start; see {self.workdir / 'ray-head.log'}")
            time.sleep(1.0)
        try:  # the dashboard answers before its job agent is ready to take submissions
            wait_for_job_agent(ray_cli()[0], rec["dashboard"], env=ray_env())
        except (TimeoutError, RuntimeError) as err:
            raise DemoError(f"the Ray head takes no jobs: {err}") from None
        say(f"started Ray head at {rec['gcs_address']} (dashboard {rec['dashboard']}, pid {proc.pid})")
        return rec

    def stop(self) -> None:
        for name, marker in (("ray", "ray"), ("mlflow", "mlflow")):
            rec = self.state.get(name) or {}
            if rec:
                stop_group(rec.get("pid"), marker)
                say(f"stopped {name} (process group {rec.get('pid')})")
        self.state = {}
        if self.path.exists():
            self.path.unlink()


def _healthy(url: str) -> bool:
    try:
        return requests.get(url, timeout=3).status_code == 200
    except requests.RequestException:
        return False


def _answers(url: str) -> bool:
    """The server at ``url`` answers HTTP (a 401 from Ray's token auth counts: it is up)."""
    try:
        return requests.get(url, timeout=3).status_code < 500
    except requests.RequestException:
        return False


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
    synthesize(root, SynthConfig(**wanted))
    stamp.write_text(json.dumps(wanted))
    say(f"wrote {cfg.num_train} train + {cfg.num_val} val synthetic images to {root}")
    return root


def run_logged(cmd: list[str], *, env: dict[str, str], log_path: Path, what: str,
               timeout_s: float = 3600) -> str:
    """Run ``cmd``, echo its output and keep it in ``log_path``; raise DemoError on failure."""
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
                print(f"    {line}", end="", flush=True)
                if time.monotonic() > deadline:
                    raise DemoError(f"{what} took longer than {timeout_s:.0f}s; log: {log_path}")
            proc.wait()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
    if proc.returncode != 0:
        raise DemoError(f"{what} failed (exit {proc.returncode}); log: {log_path}")
    return "".join(lines)


def preflight(head: dict, storage: Path, serve_config: Path, log: Path) -> None:
    code = "import sys; from components.cli.main import main; sys.exit(main())"
    run_logged([sys.executable, "-c", code, "preflight", "--address", head["dashboard"],
                "--storage-path", str(storage), "--serve-config", str(serve_config), "--timeout", "120"],
               env=ray_env(), log_path=log, what="preflight", timeout_s=600)


def build_plan(cfg: DemoConfig, *, data: Path, storage: Path, tag: str, out: Path) -> dict[str, Any]:
    """The commands the pipeline job runs, in order, with the hand-offs as placeholders."""
    steps = []
    inits = {"finetune": "{pretrain.checkpoint}", "detect": "{pretrain.checkpoint}"}
    concurrency = cfg.ray.stage_data_concurrency()
    for name in STAGES:
        stage = cfg.stages[name]
        overrides = [f"data.root={data}", f"data.concurrency={concurrency}", f"run.storage_path={storage}",
                     f"run.name=demo-{name}-{tag}", *stage.overrides]
        if name in inits and stage.init_from_pretrain:
            overrides.append(f"model.init_from={inits[name]}")
        steps.append({"name": name, "module": f"pipelines.{name}", "config": stage.config,
                      "overrides": overrides})
    # The gate judges every classifier the run made: the pretrained one first, then the
    # fine-tuned one against whichever is @champion by then (re-measured on the same val split).
    gates = (("promote-pretrained", "classification", "imagefolder", "pretrain"),
             ("promote-classification", "classification", "imagefolder", "finetune"),
             ("promote-detection", "detection", "coco", "detect"))
    for name, task, fmt, stage in gates:
        steps.append({"name": name, "module": "pipelines.promote", "config": cfg.promote.config,
                      "overrides": [f"task={task}", f"data.format={fmt}", f"data.root={data}",
                                    f"data.concurrency={concurrency}",
                                    f"candidate={{{stage}.registered_version}}",
                                    f"cache_dir={out / 'model-cache'}", *cfg.promote.overrides]})
    return {"steps": steps, "result": str(out / f"chain-{tag}.json")}


def submit_pipeline(head: dict, plan_path: Path, env_vars: dict[str, str], tag: str, log: Path) -> dict:
    runtime_env = {"working_dir": ".", "env_vars": env_vars,
                   "excludes": [".git", ".venv", ".demo", "*.egg-info", "benchmarks/results"]}
    run_logged(ray_cli("job", "submit", "--address", head["dashboard"], "--submission-id", f"vitpipe-demo-{tag}",
                       "--runtime-env-json", json.dumps(runtime_env), "--entrypoint-num-cpus", "0",
                       "--", "python", "-m", "pipelines.demo", "chain", "--plan", str(plan_path)),
               env=ray_env(), log_path=log, what="the pipeline job", timeout_s=3600)
    plan = json.loads(plan_path.read_text())
    return json.loads(Path(plan["result"]).read_text())


def demo_serve_config(src: Path, *, port: int, grpc_port: int, env_vars: dict[str, str]) -> dict:
    """serve.yaml as the repository keeps it, bound to 127.0.0.1:port, with the demo's env."""
    config = yaml.safe_load(src.read_text())
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


def deploy_serve(services: Services, head: dict, cfg: ServeSection, env_vars: dict[str, str], log: Path) -> str:
    rec = services.state.get("serve") or {}
    port = rec.get("port") or _free_port()
    config = demo_serve_config(REPO / cfg.config, port=port, grpc_port=rec.get("grpc_port") or _free_port(),
                               env_vars=env_vars)
    path = services.workdir / "serve.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    services.state["serve"] = {"port": port, "grpc_port": config.get("grpc_options", {}).get("port")}
    services.save()
    run_logged(serve_cli("deploy", str(path), "--address", head["dashboard"]), env=ray_env(), log_path=log,
               what="serve deploy", timeout_s=300)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + cfg.ready_timeout_s
    while True:
        try:
            if requests.get(f"{url}/healthz", timeout=10).status_code == 200:
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
               timeout_s=1800)
    return out / "report.html"


# ----------------------------------------------------------------------------- chain (in the job)
def run_chain(plan_path: Path) -> int:
    """Inside the Ray job: run each pipeline step in order, handing checkpoints forward."""
    plan = json.loads(plan_path.read_text())
    results: dict[str, Any] = {}
    for step in plan["steps"]:
        overrides = []
        for item in step["overrides"]:
            for name, summary in results.items():
                for key, value in summary.items():
                    item = item.replace(f"{{{name}.{key}}}", str(value))
            overrides.append(item)
        cmd = [sys.executable, "-m", step["module"], "--config", step["config"], *overrides]
        print(f"==> {step['name']}: {' '.join(cmd[2:])}", flush=True)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        last_json = None
        for line in proc.stdout:
            print(line, end="", flush=True)
            stripped = line.strip()
            if stripped.startswith("{") and stripped.endswith("}"):
                try:
                    last_json = json.loads(stripped)
                except json.JSONDecodeError:
                    pass
        if proc.wait() != 0:
            print(f"==> {step['name']} failed (exit {proc.returncode})", flush=True)
            return proc.returncode or 1
        if last_json is None:
            print(f"==> {step['name']} printed no JSON summary", flush=True)
            return 1
        results[step["name"]] = last_json
        print(f"==> {step['name']} done: {json.dumps(last_json, default=str)[:300]}", flush=True)
    Path(plan["result"]).write_text(json.dumps(results, indent=1, default=str))
    print(json.dumps({"steps": list(results)}), flush=True)
    return 0


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
        head = services.ray(cfg.ray, {**env_vars, **SERVE_NODE_ENV})
        data = synthesize_data(cfg.synth, workdir / "synth")
        storage = workdir / "runs"
        storage.mkdir(exist_ok=True)

        say("preflight: versions, shared storage, serve config (as a Ray job)")
        preflight(head, storage, REPO / cfg.serve.config, log)

        tag = time.strftime("%Y%m%d-%H%M%S")
        plan = build_plan(cfg, data=data, storage=storage, tag=tag, out=workdir)
        plan_path = workdir / f"plan-{tag}.json"
        plan_path.write_text(json.dumps(plan, indent=1))
        say("ray job submit: pretrain -> finetune -> detect -> promote (pretrained and fine-tuned classifier, "
            "detector)")
        t0 = time.monotonic()
        chain = submit_pipeline(head, plan_path, env_vars, tag, log)
        summary["pipeline_s"] = round(time.monotonic() - t0, 1)
        summary["pipeline"] = {name: {k: v for k, v in res.items() if k in (
            "registered_version", "metrics", "seconds", "decision", "candidate", "champion", "alias")}
            for name, res in chain.items()}

        say("serve deploy: the @champion models from the registry")
        t0 = time.monotonic()
        url = deploy_serve(services, head, cfg.serve, env_vars, log)
        summary["serve_ready_s"] = round(time.monotonic() - t0, 1)
        summary["serve_url"] = url
        summary["answers"] = query_serve(url, data, cfg.requests_per_task)

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
        say(f"  Serve: {url}/v1/classify, {url}/v1/detect, {url}/v1/models, {url}/v2")
        say(f"  Ray dashboard: {head['dashboard']}")
        if "report" in summary:
            say(f"  report: {summary['report']} (and {Path(summary['report']).with_suffix('.md')})")
        say(f"  logs: {log}")
        return summary
    finally:
        if keep:
            say("KEEP=1: Ray, Serve and MLflow keep running; the next run reuses them "
                f"(stop: python -m pipelines.demo stop --workdir {workdir})")
        else:
            services.stop()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "chain":
        parser = argparse.ArgumentParser(prog="python -m pipelines.demo chain")
        parser.add_argument("--plan", required=True)
        return run_chain(Path(parser.parse_args(argv[1:]).plan))
    if argv and argv[0] == "stop":
        parser = argparse.ArgumentParser(prog="python -m pipelines.demo stop")
        parser.add_argument("--workdir", default=str(REPO / ".demo"))
        Services(Path(parser.parse_args(argv[1:]).workdir)).stop()
        return 0
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
        missing = [s for s in STAGES if s not in cfg.stages]
        if missing:
            raise ConfigError(f"demo config lacks stages: {', '.join(missing)}")
        run_demo(cfg, keep=keep)
    except (ConfigError, DemoError) as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 1 if isinstance(err, DemoError) else 2
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
