"""The run folder's files, written so that a kill at any moment leaves either the old or the new
content, never a cut one (extras/runlog.py, extras/checkpoints.py, extras/run_lock.py).

    atomic_write_text   write a temporary twin, fsync it, rename it over the file, fsync the folder
    append / read       the JSON-lines logs (a crash can only cut the last line: trim_logs drops it)
    trim_logs           the logs back to a checkpoint's step, atomically
    fail                a one-line error for the user (no traceback)
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def fail(message: str):
    """A one-line error for the user (no traceback): what is wrong and how to fix it."""
    raise SystemExit(" ".join(f"error: {message}".split("\n")))


def fsync_folder(folder) -> None:
    """Make a rename inside ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path, text: str) -> None:
    """Replace ``path`` by ``text`` whole: a kill at any moment leaves the old file or the new one
    (a ``.<name>.tmp`` twin left by a kill is overwritten by the next write)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError:   # a full disk: the old file stays, the cut twin goes
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    fsync_folder(path.parent)


def append(cfg, name: str, rows) -> None:
    """Append rows to ``<out>/<name>`` as JSON lines."""
    with (Path(cfg.out) / name).open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read(out, name: str) -> list[dict]:
    """The rows of ``<out>/<name>`` (none if there is no such file)."""
    path = Path(out) / name
    return [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()] if path.exists() else []


LOGS = ("metrics.jsonl", "samples.jsonl", "eval.jsonl", "router.jsonl")


def trim_logs(out, step: int) -> None:
    """Drop the log lines of steps after ``step`` (written between the last checkpoint and a
    crash) and any line a crash cut short, so a resumed run's logs read as one run's. Each log
    is replaced whole (:func:`atomic_write_text`): a kill mid-trim loses no line of a kept step."""
    for name in LOGS:
        path = Path(out) / name
        if not path.exists():
            continue
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                pass   # a line cut short by a crash mid-write
        text = "".join(l + "\n" for l in keep)
        if text != path.read_text(encoding="utf-8"):
            atomic_write_text(path, text)
