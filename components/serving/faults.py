"""Fault injection for the chaos tests: make one model replica hang, from the outside.

Off unless the replicas' environment names a trigger file in ``$VITPIPE_SERVE_HANG_FILE``
(the chaos tests set it in the application's ``runtime_env``; it is not a setting). Once
that file exists, the first replica to start a batch renames it away (so exactly one
replica claims it) and its forward passes never finish from then on (a cancelled request
does not free the stuck thread, as with a wedged device): the replica looks alive to Ray
but answers nothing, which is what its health check and the ingress' timeout must handle.
"""

from __future__ import annotations

import logging
import os
import time

HANG_FILE_ENV = "VITPIPE_SERVE_HANG_FILE"
HANG_S = 3600.0

log = logging.getLogger("ray.serve")
_hung = False  # this process claimed the trigger: every later forward pass hangs too


def hang_if_asked() -> None:
    """Return at once, unless this replica claims the hang trigger (or did before): then
    block the calling thread for ``HANG_S``. Called by the forward pass, on its thread."""
    global _hung
    trigger = os.environ.get(HANG_FILE_ENV)
    if not trigger:
        return
    if not _hung:
        try:
            os.rename(trigger, f"{trigger}.claimed-by-{os.getpid()}")
        except OSError:  # not asked for, or another replica claimed it
            return
        _hung = True
        log.warning("fault injection: this replica (pid %d) now hangs", os.getpid())
    time.sleep(HANG_S)
