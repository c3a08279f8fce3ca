"""``vitpipe preflight``: check a Ray cluster before submitting a pipeline to it.

Run from the machine you submit from, against the cluster you submit to::

    vitpipe preflight --address HEAD:6379 --storage-path s3://bucket/runs --gpus 4 \\
        --serve-config pipelines/configs/serve.yaml

Checks, one table row each, all of them run even after a failure:

- **connect**: the cluster answers at ``--address`` (a GCS ``host:port``, ``ray://`` or
  ``auto``). A dashboard URL (``http://host:8265``, what ``ray job submit`` takes) runs the
  same checks as a Ray job inside the cluster, with this machine's versions to compare.
- **versions**: Ray and Python on every alive node equal this machine's (a tiny task pinned
  to each node reports them): skew between submitter, head and workers is the classic
  failure. torch and vitpipe are shown for information.
- **storage**: a task pinned to each node writes a file under ``storage_path`` and reads
  back every other node's file, so a local disk that only looks shared fails here rather
  than at the first checkpoint restore.
- **GPUs**: the cluster has at least ``--gpus`` GPUs, and a task holding one GPU on each
  GPU node sees CUDA through torch.
- **serve config**: the file validates with Ray Serve's own ``ServeDeploySchema`` and each
  application's ``import_path`` imports on the cluster.

Exit code 0 when every check passes, 1 when any fails, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import sys
import uuid
from dataclasses import dataclass
from typing import Any

PROBE_DIR = ".vitpipe_preflight"


@dataclass
class Check:
    """One row of the report: ``ok`` False fails the preflight."""

    name: str
    ok: bool
    detail: str


# --- CLI ---------------------------------------------------------------------------------

def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "preflight", help="check a Ray cluster (versions, storage, GPUs, serve config) before a submit",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--address", required=True,
                   help="Ray cluster: GCS host:port, ray://host:10001, auto, or dashboard http://host:8265")
    p.add_argument("--storage-path", required=True,
                   help="Ray Train storage_path to check from every node (local/shared path or s3://...)")
    p.add_argument("--gpus", type=int, default=0, help="GPUs the pipeline needs (default 0)")
    p.add_argument("--serve-config", default=None, help="Serve config YAML to validate")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each probe")
    p.add_argument("--json", action="store_true", help="print the checks as JSON instead of a table")
    # Set when preflight runs as a Ray job for a dashboard address: the submitter's versions.
    p.add_argument("--expect-ray", default=None, help=argparse.SUPPRESS)
    p.add_argument("--expect-python", default=None, help=argparse.SUPPRESS)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from components.cli.main import UserError

    if args.gpus < 0:
        raise UserError("--gpus must be 0 or more")
    if args.timeout <= 0:
        raise UserError("--timeout must be positive")
    serve_text = None
    if args.serve_config:
        try:
            with open(args.serve_config, encoding="utf-8") as fh:
                serve_text = fh.read()
        except OSError as err:
            raise UserError(f"cannot read --serve-config {args.serve_config}: {err.strerror}") from None

    if args.address.startswith(("http://", "https://")):
        return _run_as_job(args, serve_text)

    checks = run_preflight(
        args.address, args.storage_path, gpus=args.gpus, serve_config_text=serve_text,
        timeout_s=args.timeout, expect_ray=args.expect_ray, expect_python=args.expect_python,
    )
    print(json.dumps([c.__dict__ for c in checks], indent=1) if args.json else format_report(args.address, checks))
    return 0 if all(c.ok for c in checks) else 1


def format_report(address: str, checks: list[Check]) -> str:
    width = max([len("CHECK")] + [len(c.name) for c in checks])
    lines = [f"vitpipe preflight: {address}", f"{'CHECK':<{width}}  RESULT  DETAIL"]
    for c in checks:
        lines.append(f"{c.name:<{width}}  {'PASS' if c.ok else 'FAIL':<6}  {c.detail}")
    failed = sum(not c.ok for c in checks)
    verdict = "PASS" if not failed else f"FAIL ({failed} of {len(checks)} checks failed)"
    lines.append(f"preflight: {verdict}")
    return "\n".join(lines)


# --- the checks --------------------------------------------------------------------------

def run_preflight(
    address: str,
    storage_path: str,
    *,
    gpus: int = 0,
    serve_config_text: str | None = None,
    timeout_s: float = 60.0,
    expect_ray: str | None = None,
    expect_python: str | None = None,
) -> list[Check]:
    """Connect to the cluster at ``address`` and run every check; never raises for a failure.

    Reuses the current Ray connection when this process is already connected to that
    cluster (``ray.init`` earlier); otherwise connects and disconnects again.
    """
    import ray

    local = local_versions()
    expected = {"ray": expect_ray or local["ray"], "python": expect_python or local["python"]}
    checks: list[Check] = []
    if serve_config_text is not None:
        checks.append(check_serve_schema(serve_config_text))

    connected_here = False
    try:
        if not ray.is_initialized():
            unreachable = _unreachable(address)
            if unreachable:
                return [Check("connect", False, unreachable)] + checks
            ray.init(address=address, logging_level="ERROR", log_to_driver=False,
                     configure_logging=False)
            connected_here = True
        elif address not in ("auto", _current_gcs_address()):
            return [Check("connect", False, f"this process is already connected to "
                          f"{_current_gcs_address()}, not {address}")] + checks
    except Exception as err:  # version mismatch, auth, refused: all are one failed row
        return [Check("connect", False, _first_line(err))] + checks

    try:
        nodes = alive_nodes()
        checks.insert(0, Check("connect", True, f"Ray cluster at {address}: {len(nodes)} alive node(s)"))
        checks += check_versions(nodes, expected, timeout_s)
        checks += check_storage(storage_path, nodes, timeout_s)
        checks += check_gpus(gpus, nodes, timeout_s)
        if serve_config_text is not None:
            checks += check_serve_imports(serve_config_text, timeout_s)
    finally:
        if connected_here:
            ray.shutdown()
    return checks


def local_versions() -> dict[str, str]:
    """Versions on this node: Ray, Python, torch and vitpipe (``"-"`` when not installed)."""
    import importlib.metadata as md

    def version(dist: str) -> str:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "-"

    return {
        "ray": version("ray"),
        "python": platform.python_version(),
        "torch": version("torch"),
        "vitpipe": version("vitpipe"),
        "host": socket.gethostname(),
    }


def alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def _pinned(fn, node_id: str, **options):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    options.setdefault("num_cpus", 0)
    return ray.remote(fn).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False), max_retries=0, **options
    )


def _node_label(node: dict[str, Any]) -> str:
    return f"{node.get('NodeManagerAddress', '?')} ({node['NodeID'][:8]})"


def _gather(refs: dict[str, Any], timeout_s: float) -> dict[str, tuple[bool, Any]]:
    """``{key: (finished, value or error text)}`` for a dict of object refs."""
    import ray

    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    ready = set(ready)
    out = {}
    for key, ref in refs.items():
        if ref not in ready:
            out[key] = (False, f"no answer in {timeout_s:.0f}s")
            ray.cancel(ref, force=True)
            continue
        try:
            out[key] = (True, ray.get(ref))
        except Exception as err:
            out[key] = (False, _first_line(err))
    return out


def check_versions(nodes: list[dict], expected: dict[str, str], timeout_s: float) -> list[Check]:
    """Ray and Python of every node equal ``expected`` (Python compared to major.minor.micro)."""
    refs = {n["NodeID"]: _pinned(local_versions, n["NodeID"]).remote() for n in nodes}
    answers = _gather(refs, timeout_s)
    checks = []
    for node in nodes:
        label = _node_label(node)
        done, info = answers[node["NodeID"]]
        if not done:
            checks.append(Check(f"versions {label}", False, f"version probe failed: {info}"))
            continue
        problems = []
        if info["ray"] != expected["ray"]:
            problems.append(f"Ray {info['ray']} != local {expected['ray']}")
        if info["python"] != expected["python"]:
            problems.append(f"Python {info['python']} != local {expected['python']}")
        detail = (f"Ray {info['ray']}, Python {info['python']}, torch {info['torch']}, "
                  f"vitpipe {info['vitpipe']}")
        checks.append(Check(f"versions {label}", not problems,
                            "; ".join(problems) + f" ({detail})" if problems else detail))
    return checks


def _storage_location(storage_path: str) -> tuple[str, bool]:
    """(normalised path, is a URI). Local paths are made absolute on this machine."""
    from components.core.fs import is_uri, normalize

    return normalize(storage_path), is_uri(storage_path)


def _fs(path: str, is_uri: bool):
    from components.core.fs import filesystem

    return filesystem(path)


def _storage_write(base: str, is_uri: bool, name: str) -> str:
    """Write ``base/name`` on this node and read it back; returns the node id."""
    import ray

    fs, inner = _fs(base, is_uri)
    fs.create_dir(inner, recursive=True)
    payload = name.encode()
    with fs.open_output_stream(f"{inner}/{name}") as out:
        out.write(payload)
    with fs.open_input_stream(f"{inner}/{name}") as src:
        if src.read() != payload:
            raise OSError("the probe file read back different bytes")
    return ray.get_runtime_context().get_node_id()


def _storage_read(base: str, is_uri: bool, names: list[str]) -> list[str]:
    """The names under ``base`` that this node cannot read back intact."""
    fs, inner = _fs(base, is_uri)
    missing = []
    for name in names:
        try:
            with fs.open_input_stream(f"{inner}/{name}") as src:
                if src.read() != name.encode():
                    missing.append(name)
        except (FileNotFoundError, OSError):
            missing.append(name)
    return missing


def _storage_cleanup(base: str, is_uri: bool) -> None:
    fs, inner = _fs(base, is_uri)
    fs.delete_dir(inner)


def check_storage(storage_path: str, nodes: list[dict], timeout_s: float) -> list[Check]:
    """Every node writes a probe under storage_path and reads every other node's probe."""
    base, is_uri = _storage_location(storage_path)
    probe_dir = f"{base}/{PROBE_DIR}-{uuid.uuid4().hex[:12]}"
    names = {n["NodeID"]: f"{n['NodeID'][:16]}.txt" for n in nodes}
    writes = _gather({nid: _pinned(_storage_write, nid).remote(probe_dir, is_uri, names[nid])
                      for nid in names}, timeout_s)
    written = [names[nid] for nid, (done, _) in writes.items() if done]
    reads = _gather({nid: _pinned(_storage_read, nid).remote(probe_dir, is_uri, written)
                     for nid in names}, timeout_s) if written else {}
    checks = []
    for node in nodes:
        nid, label = node["NodeID"], _node_label(node)
        done, result = writes[nid]
        if not done:
            checks.append(Check(f"storage write {label}", False, f"cannot write {base}: {result}"))
            continue
        done, missing = reads[nid]
        if not done:
            checks.append(Check(f"storage write {label}", False, f"cannot read {base}: {missing}"))
        elif missing:
            checks.append(Check(
                f"storage write {label}", False,
                f"{base} is not shared: this node cannot see {len(missing)} file(s) other nodes "
                "wrote there; use object storage (s3://...) or a volume every node mounts",
            ))
        else:
            checks.append(Check(f"storage write {label}", True,
                                f"{base} writable here and sees all {len(written)} node(s)' files"))
    if written:  # best effort: leave no probe files behind
        first = next(nid for nid, (done, _) in writes.items() if done)
        _gather({"cleanup": _pinned(_storage_cleanup, first).remote(probe_dir, is_uri)}, timeout_s)
    return checks


def _cuda_probe() -> dict[str, Any]:
    import ray
    import torch

    ids = ray.get_gpu_ids()
    available = torch.cuda.is_available()
    return {
        "ray_gpu_ids": [str(i) for i in ids],
        "cuda": available,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if available else [],
    }


def check_gpus(requested: int, nodes: list[dict], timeout_s: float) -> list[Check]:
    """The cluster has ``requested`` GPUs now, and each GPU node's GPU is usable from torch."""
    total = sum(int(n.get("Resources", {}).get("GPU", 0)) for n in nodes)
    gpu_nodes = [n for n in nodes if n.get("Resources", {}).get("GPU", 0) >= 1]
    enough = total >= requested
    detail = f"{total} GPU(s) on {len(gpu_nodes)} alive node(s), {requested} requested"
    if not enough:
        detail += ("; a GPU worker group that scales from zero counts only once its nodes are up "
                   "(raise minReplicas or run preflight after a scale-up)")
    checks = [Check("gpus", enough, detail)]
    if requested and gpu_nodes:
        refs = {n["NodeID"]: _pinned(_cuda_probe, n["NodeID"], num_gpus=1).remote() for n in gpu_nodes}
        answers = _gather(refs, timeout_s)
        for node in gpu_nodes:
            done, info = answers[node["NodeID"]]
            ok = done and info["cuda"]
            text = (f"CUDA sees {', '.join(info['devices'])}" if ok else
                    f"torch cannot use the GPU: {info if not done else 'torch.cuda.is_available() is False'}")
            checks.append(Check(f"cuda {_node_label(node)}", ok, text))
    return checks


def check_serve_schema(text: str) -> Check:
    """The Serve config parses and validates with Ray Serve's ``ServeDeploySchema``."""
    import yaml
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        data = yaml.safe_load(text)
        config = ServeDeploySchema.model_validate(data)
    except yaml.YAMLError as err:
        return Check("serve config", False, f"not YAML: {_first_line(err)}")
    except ValidationError as err:
        shown = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()[:3]
        )
        return Check("serve config", False, f"{err.error_count()} error(s): {shown}")
    if not config.applications:
        return Check("serve config", False, "no applications")
    names = ", ".join(f"{a.name} ({a.route_prefix})" for a in config.applications)
    return Check("serve config", True, f"valid ServeDeploySchema: {names}")


def _import_target(import_path: str) -> str:
    """Import ``module:attr`` or ``module.attr`` (Serve's forms); returns the object's type."""
    import importlib

    if ":" in import_path:
        module, attr = import_path.split(":", 1)
    else:
        module, _, attr = import_path.rpartition(".")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return type(obj).__name__


def check_serve_imports(text: str, timeout_s: float) -> list[Check]:
    """Each application's ``import_path`` imports on the cluster (not just here)."""
    import yaml

    try:
        apps = (yaml.safe_load(text) or {}).get("applications") or []
    except (yaml.YAMLError, AttributeError):
        return []
    refs = {a["import_path"]: ray_remote_import(a["import_path"]) for a in apps if a.get("import_path")}
    answers = _gather(refs, timeout_s) if refs else {}
    return [
        Check(f"serve import {path}", done, f"imports on the cluster ({value})" if done else value)
        for path, (done, value) in answers.items()
    ]


def ray_remote_import(import_path: str):
    import ray

    return ray.remote(num_cpus=0, max_retries=0)(_import_target).remote(import_path)


# --- helpers -----------------------------------------------------------------------------

def _first_line(err: BaseException) -> str:
    """One line for a table cell; a remote task's error is shown by its cause."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        err = cause
    text = f"{type(err).__name__}: {err}".strip()
    return text.splitlines()[0][:300]


def _current_gcs_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def _unreachable(address: str) -> str | None:
    """A reason when a ``host:port`` GCS address does not accept connections, else None."""
    if address == "auto" or "://" in address or ":" not in address:
        return None
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            return None
    except (OSError, ValueError) as err:
        return f"cannot reach a Ray GCS at {address}: {err}"


def _run_as_job(args: argparse.Namespace, serve_text: str | None) -> int:
    """Dashboard address: run the checks as a Ray job inside the cluster, print its answer."""
    import time

    from ray.job_submission import JobStatus, JobSubmissionClient

    local = local_versions()
    serve_row = [check_serve_schema(serve_text)] if serve_text is not None else []
    entrypoint = (
        f"python -m components.cli.main preflight --address auto "
        f"--storage-path {_shell_quote(args.storage_path)} --gpus {args.gpus} "
        f"--timeout {args.timeout} --expect-ray {local['ray']} --expect-python {local['python']}"
    )
    try:
        client = JobSubmissionClient(args.address)
        job_id = client.submit_job(entrypoint=entrypoint, entrypoint_num_cpus=0)
    except Exception as err:
        print(format_report(args.address, [Check("connect", False, _first_line(err))] + serve_row))
        return 1
    deadline = time.monotonic() + 6 * args.timeout + 120
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(1.0)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    if not status.is_terminal():
        client.stop_job(job_id)
    print(logs.rstrip())
    for row in serve_row:
        print(format_report("serve config (checked here)", [row]))
    passed = status == JobStatus.SUCCEEDED and all(c.ok for c in serve_row)
    if status not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        print(f"preflight job {job_id} ended {status}", file=sys.stderr)
    return 0 if passed else 1


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)
