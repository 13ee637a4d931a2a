"""Progress bars for a person at a terminal, with counts and time left (tqdm).

The command line turns them on (`enable_for_terminal`) only when its stderr is a terminal and
`--json` is not given; runs launched by the Dagster daemon, tests and piped output get none, so
logs stay clean. Dagster captures file descriptor 2 while a step runs, so the bars write to a
duplicate of the terminal's descriptor taken before the run, named in `MM_PROGRESS_FD`.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from typing import TextIO

from tqdm import tqdm

ENV = "MM_PROGRESS_FD"


def enable_for_terminal() -> bool:
    """Keep a duplicate of stderr for the bars when it is a terminal; True when enabled."""
    if ENV not in os.environ and sys.stderr.isatty():
        os.environ[ENV] = str(os.dup(sys.stderr.fileno()))
    return ENV in os.environ


@lru_cache(maxsize=1)
def _terminal(fd: str) -> TextIO | None:
    try:
        return os.fdopen(int(fd), "w", closefd=False)
    except (OSError, ValueError):
        return None


def bar(total: int, description: str, unit: str = "it") -> tqdm:
    """A bar over `total` steps; with progress off, a disabled bar with the same methods."""
    stream = _terminal(os.environ[ENV]) if os.environ.get(ENV) else None
    return tqdm(
        total=total,
        desc=description,
        unit=unit,
        disable=stream is None,
        leave=False,
        file=stream,
    )
