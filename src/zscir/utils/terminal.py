"""Library progress bars only where a person watches them."""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def bars_only_on_a_terminal(library_logging):
    """Turn off one library's own progress bars while stderr is not a terminal (logs, CI), restoring them after.

    Args:
        library_logging: a `logging` module with the Hugging Face progress-bar switches
            (`transformers.utils.logging`, `diffusers.utils.logging`).
    """
    if sys.stderr.isatty():
        yield
        return
    was_on = library_logging.is_progress_bar_enabled()
    library_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            library_logging.enable_progress_bar()
