"""Ctrl-C in a command of the project ends it with one line, not a KeyboardInterrupt traceback.

    if __name__ == "__main__":
        from extras.interrupt import main_with_one_line_ctrl_c
        main_with_one_line_ctrl_c(main, "classroom", "the same command continues")

``lrpo.py`` has its own handling (extras/runlog.py: the first Ctrl-C finishes the step and saves)
and ``extras/label.py`` its own (finished batches are cached).
"""
from __future__ import annotations

import sys


def main_with_one_line_ctrl_c(main, name: str, note: str = "") -> None:
    """Call ``main()``; a Ctrl-C prints ``[name] interrupted (Ctrl-C)[; note]`` on stderr and
    exits with code 130 (128 + SIGINT), as a shell reports an interrupted command."""
    try:
        main()
    except KeyboardInterrupt:
        print(f"\n[{name}] interrupted (Ctrl-C)" + (f"; {note}" if note else ""), file=sys.stderr,
              flush=True)
        raise SystemExit(130) from None
