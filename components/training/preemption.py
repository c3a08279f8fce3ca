"""Stop requests for a training worker: SIGTERM (node drain, spot preemption) and Ray
Train's preemption notice. One job: turn them into a flag the loop checks at each log
boundary (it then writes a checkpoint and raises :class:`Preempted`).

Python sets signal handlers only from a process's main thread; a Ray Train worker runs the
training function in a thread of its actor, and Ray's worker main loop installs its own
SIGTERM handler (exit) after any ``worker_process_setup_hook`` has run. So each rank asks
its own actor, whose tasks run on the main thread, to install the handler
(:func:`arm_sigterm_in_ray_worker`). While this process is not training, a SIGTERM goes to
the previous handler; once one arrived, a grace timer exits the process after
``VITPIPE_SIGTERM_GRACE_S`` (120 s) whatever happens.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import Any, Iterator

log = logging.getLogger(__name__)


class Preempted(RuntimeError):
    """This rank was asked to stop (SIGTERM / preemption) and wrote its checkpoint first."""


_STOP = threading.Event()
_TRAINING = threading.Event()  # set while this process runs the training loop
_PREVIOUS_HANDLER: Any = None


def _on_sigterm(signum, frame) -> None:
    if not _TRAINING.is_set():  # not a training worker: behave as before (Ray exits)
        if callable(_PREVIOUS_HANDLER):
            _PREVIOUS_HANDLER(signum, frame)
            return
        raise SystemExit(128 + signum)
    _STOP.set()
    # The training thread checkpoints at its next log boundary; if it cannot within the
    # grace period, the process exits anyway (what SIGTERM means).
    grace = float(os.environ.get("VITPIPE_SIGTERM_GRACE_S", "120"))
    timer = threading.Timer(grace, lambda: os._exit(128 + signum))
    timer.daemon = True
    timer.start()


def install_sigterm_handler() -> None:
    """Turn SIGTERM into a stop request while the training loop runs in this process.

    Must run in the process's main thread: a Ray Train worker gets it through
    :func:`arm_sigterm_in_ray_worker` (its own actor runs it there); without Ray, call it
    directly. Processes that do not train keep their previous handler's behaviour.
    """
    global _PREVIOUS_HANDLER
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGTERM)
        if previous is not _on_sigterm:
            _PREVIOUS_HANDLER = previous
            signal.signal(signal.SIGTERM, _on_sigterm)


def stop_requested() -> bool:
    return _STOP.is_set()


def arm_sigterm_in_ray_worker() -> bool:
    """Install :func:`install_sigterm_handler` in this Ray Train worker process's main thread.

    The training function runs in a thread of the worker actor, and Ray's worker main loop
    sets its own SIGTERM handler (exit) after any ``worker_process_setup_hook`` ran, so the
    handler can only be installed afterwards, from the main thread: the actor executes its
    tasks there, so this rank asks its own actor to run the installer. Returns whether our
    handler is now the process's SIGTERM handler (logged when not: SIGTERM then exits the
    worker without a checkpoint, and ``FailureConfig`` resumes from the last one).
    """
    if threading.current_thread() is threading.main_thread():
        install_sigterm_handler()
    else:
        try:
            import ray

            actor = ray.get_runtime_context().current_actor
            ray.get(actor.execute.remote(install_sigterm_handler), timeout=60)
        except Exception as err:  # noqa: BLE001 - degrade to Ray's behaviour, loudly
            log.warning("could not install the SIGTERM checkpoint handler: %s", err)
    armed = signal.getsignal(signal.SIGTERM) is _on_sigterm
    if not armed:
        log.warning("SIGTERM handler not installed: a SIGTERM ends this worker without a checkpoint")
    return armed


@contextlib.contextmanager
def stop_requests_armed() -> Iterator[None]:
    """While the training loop runs in this process: SIGTERM = checkpoint, then stop."""
    _TRAINING.set()
    arm_sigterm_in_ray_worker()
    try:
        yield
    finally:
        _TRAINING.clear()  # a SIGTERM after training ends the previous handler's way again


def preemption_notice() -> bool:
    """Ray Train's notice that a node of this run is being preempted."""
    try:
        import ray.train

        return ray.train.get_preemption_info() is not None
    except Exception:  # older Ray or not inside Ray Train
        return False
