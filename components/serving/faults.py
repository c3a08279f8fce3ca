"""Fault injection for the chaos tests: make one model replica hang, from the outside.

Off unless the replicas' environment names a trigger file in ``$VITPIPE_SERVE_HANG_FILE``
(the chaos tests set it in the application's ``runtime_env``; it is not a setting). Once
that file exists, the first replica to start a batch renames it away (so exactly one
replica claims it) and that batch never finishes: the replica looks alive to Ray but
answers nothing, which is what its health check and the ingress' timeout must handle.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

HANG_FILE_ENV = "VITPIPE_SERVE_HANG_FILE"
HANG_S = 3600.0

log = logging.getLogger("ray.serve")


async def maybe_hang() -> None:
    """Return at once, unless this replica claims the hang trigger: then block ``HANG_S``."""
    trigger = os.environ.get(HANG_FILE_ENV)
    if not trigger:
        return
    try:
        os.rename(trigger, f"{trigger}.claimed-by-{os.getpid()}")
    except OSError:  # not asked for, or another replica claimed it
        return
    log.warning("fault injection: this replica (pid %d) now hangs", os.getpid())
    await asyncio.to_thread(time.sleep, HANG_S)
