"""The search's trial record: ``<storage>/<run.name>/vitpipe_trials.json``, plain JSON.

It holds what a search needs to resume without Tune's own (pickled) experiment state: the
search section it was started with (space, seed, number of trials) and, per trial, its
sampled values, status, best metric, checkpoint path and MLflow child run id. The driver
writes it when the search starts (every trial PENDING, its values drawn from the seeded
space) and again as each trial starts and ends; a driver started again reads it, keeps the
trials that ended and runs the others with the values they were drawn with.

Statuses: PENDING (not started), RUNNING, FINISHED (trained to its end), KILLED (stopped
early by ASHA), FAILED. FINISHED and KILLED trials are not run again; FAILED ones only with
``search.resume_errored``; PENDING and RUNNING ones are (their training resumes from its
last checkpoint).
"""

from __future__ import annotations

import json
import random
from typing import Any

from components.core.config import ConfigError
from components.training import storage
from components.tune.config import SearchSection

RECORD_FILE = "vitpipe_trials.json"
ENDED = ("FINISHED", "KILLED")
VERSION = 1


def sample_trials(search: SearchSection) -> list[dict[str, Any]]:
    """``search.num_samples`` trials drawn from ``search.space`` with ``search.seed`` (random
    search: each trial draws every domain once, in the space's key order)."""
    rng = random.Random(search.seed)
    return [{"trial_id": f"{i:05d}", "config": {k: d.sample(rng) for k, d in search.space.items()},
             "status": "PENDING", "metric": None, "step": None, "eval": {}, "checkpoint": None, "mlflow_run_id": None, "error": None}
            for i in range(search.num_samples)]


def _search_key(search: SearchSection) -> dict[str, Any]:
    """The part of the search section that decides which trials exist."""
    return {"space": {k: d.describe() for k, d in search.space.items()},
            "seed": search.seed, "num_samples": search.num_samples}


class TrialRecord:
    """The trial record of one search, kept in memory and written through to storage."""

    def __init__(self, exp_dir: str, data: dict[str, Any]) -> None:
        self.path = storage.join(exp_dir, RECORD_FILE)
        self.data = data

    @classmethod
    def open(cls, exp_dir: str, search: SearchSection) -> "TrialRecord":
        """The record at ``exp_dir`` (a resumed search), else a new one with freshly drawn trials.

        A record written for a different search section (space, seed or ``num_samples``) is
        a :class:`ConfigError`: its trials were sampled from another search.
        """
        text = storage.read_text(storage.join(exp_dir, RECORD_FILE))
        if text:
            data = json.loads(text)
            if data.get("search") != _search_key(search):
                raise ConfigError(f"{exp_dir} holds a search started with another search section "
                                  f"({json.dumps(data.get('search'), sort_keys=True)}); "
                                  "give this one a new run.name")
            data["attempts"] = int(data.get("attempts", 0)) + 1
            record = cls(exp_dir, data)
        else:
            record = cls(exp_dir, {"version": VERSION, "search": _search_key(search), "attempts": 0,
                                   "trials": sample_trials(search)})
        record.write()
        return record

    @property
    def resumed(self) -> bool:
        return self.data["attempts"] > 0

    @property
    def trials(self) -> list[dict[str, Any]]:
        return self.data["trials"]

    def trial(self, trial_id: str) -> dict[str, Any]:
        return next(t for t in self.trials if t["trial_id"] == trial_id)

    def to_run(self, resume_errored: bool) -> list[dict[str, Any]]:
        """The trials this driver runs: every one not ended (FAILED ones with ``resume_errored``)."""
        return [t for t in self.trials if t["status"] not in ENDED
                and (t["status"] != "FAILED" or resume_errored)]

    def update(self, trial_id: str, **fields: Any) -> None:
        """Set ``fields`` of one trial and write the record (Tune calls back from one thread)."""
        self.trial(trial_id).update(fields)
        self.write()

    def write(self) -> None:
        """Write the record whole: to a temporary file, then moved over the old one."""
        text = json.dumps(self.data, indent=1, sort_keys=True)
        storage.write_text(self.path + ".tmp", text)
        fs, inner = storage.filesystem(self.path)
        fs.move(inner + ".tmp", inner)
