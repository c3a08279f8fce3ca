"""What ``vitpipe registry list`` shows: registered models, versions, aliases, key metrics."""

from __future__ import annotations

from typing import Any

from components.tracking.registry import client

KEY_METRICS = ("top1", "top5", "map", "map50")


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text  # a hand-set tag: shown as it is


def list_models(*, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Every registered model with its versions (newest first), aliases and metric tags."""
    mlf = client(tracking_uri)
    out = []
    for model in mlf.search_registered_models(max_results=1000):
        by_version: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            by_version.setdefault(str(version), []).append(alias)
        versions = []
        for mv in mlf.search_model_versions(f"name = '{model.name}'"):
            tags = mv.tags or {}
            versions.append({
                "version": str(mv.version),
                "aliases": sorted(by_version.get(str(mv.version), [])),
                "created": mv.creation_timestamp,
                "run_id": tags.get("run_id", mv.run_id),
                "model_name": tags.get("model_name"),
                "data_fingerprint": tags.get("data_fingerprint"),
                "metrics": {k[len("metric."):]: _number(v) for k, v in tags.items()
                            if k.startswith("metric.")},
                "promotion": {k[len("promotion."):]: v for k, v in tags.items()
                              if k.startswith("promotion.")},
            })
        versions.sort(key=lambda v: int(v["version"]), reverse=True)
        out.append({
            "name": model.name,
            "task": (model.tags or {}).get("task"),
            "aliases": {a: str(v) for a, v in sorted((model.aliases or {}).items())},
            "versions": versions,
        })
    return sorted(out, key=lambda m: m["name"])


def format_models(models: list[dict[str, Any]]) -> str:
    """A plain-text listing, one block per registered model."""
    if not models:
        return "(no registered models)"
    blocks = []
    for m in models:
        aliases = ", ".join(f"@{a}=v{v}" for a, v in m["aliases"].items()) or "no aliases"
        lines = [f"{m['name']}  [{m['task'] or '?'}]  {aliases}"]
        lines.append(f"  {'version':>7}  {'aliases':20} {'arch':14} {'metrics':32} decision")
        for v in m["versions"]:
            metrics = " ".join(
                f"{k}={v['metrics'][k]:.4g}" if isinstance(v["metrics"][k], float)
                else f"{k}={v['metrics'][k]}"
                for k in KEY_METRICS if k in v["metrics"]
            )
            lines.append(
                f"  {v['version']:>7}  {','.join(v['aliases']) or '-':20} "
                f"{v['model_name'] or '?':14} {metrics or '-':32} "
                f"{v['promotion'].get('decision', '-')}"
            )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
