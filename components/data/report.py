"""The skip report: every record the data stage drops or repairs, counted with its reason."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SkipReport:
    """``counts`` of named events and ``skipped``: ``[{"file"|"id": ..., "reason": ...}]``.

    Image-level problems name the ``file``; annotation-level problems the annotation ``id``.
    """

    counts: Counter = field(default_factory=Counter)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def skip_file(self, file: str, reason: str) -> None:
        self.skipped.append({"file": file, "reason": reason})
        self.counts["images_skipped"] += 1

    def skip_annotation(self, ann_id: Any, reason: str) -> None:
        self.skipped.append({"id": ann_id, "reason": reason})
        self.counts["annotations_skipped"] += 1

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def reasons(self) -> Counter:
        """How often each reason occurred (reasons with details grouped by their prefix)."""
        return Counter(s["reason"].split(" (")[0] for s in self.skipped)

    def to_dict(self) -> dict[str, Any]:
        return {"counts": dict(sorted(self.counts.items())), "skipped": list(self.skipped)}
