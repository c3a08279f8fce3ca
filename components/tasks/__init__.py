"""One object per task (:class:`Task`): the stages ask it questions instead of branching on
the task's name. Adding a task = one module + one line in :data:`TASKS`."""

from components.core.names import TaskName
from components.tasks.base import Task, accepted_overrides, check_overrides
from components.tasks.classification import ClassificationTask
from components.tasks.detection import DetectionTask
from components.tasks.mae import MaeTask

TASKS: dict[str, type[Task]] = {
    "classification": ClassificationTask,
    "detection": DetectionTask,
    "mae": MaeTask,
}


def get_task(name: str) -> Task:
    """The :class:`Task` of ``name`` (a ``ValueError`` naming the known ones otherwise)."""
    try:
        return TASKS[name]()
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None


__all__ = ["TASKS", "Task", "TaskName", "accepted_overrides", "check_overrides", "get_task"]
