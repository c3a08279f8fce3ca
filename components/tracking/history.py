"""Promotion history, stored durably in MLflow as registered-model tags.

Each event (an alias moved, a candidate refused, a manual override) is one tag
``vitpipe.history.<epoch ms>-<random>`` on the registered model whose value is a small JSON
object, so that writing an event is a single atomic server call (no read-modify-write of a
shared file) and the history lives as long as the registered model does.

Event fields: ``time`` (UTC ISO 8601), ``action`` (``promoted`` | ``first`` | ``refused`` |
``manual``), ``alias`` (the alias set), ``version``, ``previous`` (the version that held the
alias before, or ``None``), ``reason``, ``metric``, ``candidate_score``, ``champion_score``,
``run_id`` (the promotion run, when there was one), ``user``.
"""

from __future__ import annotations

import getpass
import json
import secrets
import time
from datetime import datetime, timezone
from typing import Any

TAG_PREFIX = "vitpipe.history."


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def record_event(mlf, name: str, **event: Any) -> dict[str, Any]:
    """Append one event to ``name``'s history; returns the stored event."""
    now = time.time()
    stored = {
        "time": datetime.fromtimestamp(now, tz=timezone.utc).isoformat(timespec="seconds"),
        "user": _user(),
        **event,
    }
    key = f"{TAG_PREFIX}{int(now * 1000):013d}-{secrets.token_hex(3)}"
    mlf.set_registered_model_tag(name, key, json.dumps(stored, sort_keys=True))
    return stored


def read_history(mlf, name: str) -> list[dict[str, Any]]:
    """Every event of ``name``, oldest first."""
    tags = mlf.get_registered_model(name).tags
    events = []
    for key in sorted(k for k in tags if k.startswith(TAG_PREFIX)):
        try:
            events.append(json.loads(tags[key]))
        except json.JSONDecodeError:
            events.append({"time": "?", "action": "unreadable", "reason": tags[key][:80]})
    return events


def format_history(events: list[dict[str, Any]]) -> str:
    """A plain-text table, one line per event."""
    if not events:
        return "(no promotion history)"
    lines = [f"{'time':25} {'action':9} {'alias':10} {'version':>7} {'previous':>8}  reason"]
    for e in events:
        previous = e.get("previous")
        lines.append(
            f"{e.get('time', '?'):25} {e.get('action', '?'):9} {e.get('alias', '') or '':10} "
            f"{str(e.get('version', '')):>7} {str(previous) if previous else '-':>8}  "
            f"{e.get('reason', '')}"
        )
    return "\n".join(lines)
