"""``python -m streamkit.demo``: see ``python -m streamkit.demo --help``."""

from __future__ import annotations

import os
import sys

from ._cli import main

if __name__ == "__main__":
    status = 1
    broken = False
    try:
        status = main()
    except* BrokenPipeError:  # possibly from inside a task group
        broken = True
    if broken:
        # The reader went away (`... | head`): exit quietly, as command line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(status)
