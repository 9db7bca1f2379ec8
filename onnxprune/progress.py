"""The progress callback the stages report through: one short message per step, for a spinner or a log.

``Progress`` is its type; ``no_progress`` is the callback that ignores every message (the default
where a caller passes none).
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str], None]


def no_progress(msg: str) -> None:
    """Ignore a progress message."""


__all__ = ["Progress", "no_progress"]
