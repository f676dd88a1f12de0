"""Logging set-up, done one way for every command: partreid's messages (logger ``partreid``) to
stdout and, for a run folder, to its ``log.txt``."""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

LOGGER = "partreid"
_FORMAT = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")


def setup_logging(log_file: Optional[str] = None) -> logging.Logger:
    """INFO messages of partreid to stdout and to ``log_file`` (its folder is created).

    Calling it again replaces the handlers an earlier call installed (a new run, a new log
    file). Where the application has configured the root logger already (its own handlers,
    or pytest's), partreid's messages reach those by propagation and no console handler is
    added, so nothing is printed twice. Other libraries' loggers are left alone.
    """
    log = logging.getLogger(LOGGER)
    log.setLevel(logging.INFO)
    for h in [h for h in log.handlers if getattr(h, "_partreid", False)]:
        log.removeHandler(h)
        h.close()
    handlers = []
    if not logging.getLogger().handlers:
        handlers.append(logging.StreamHandler(sys.stdout))
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    for h in handlers:
        h.setFormatter(_FORMAT)
        h._partreid = True  # type: ignore[attr-defined]
        log.addHandler(h)
    return log
