"""The run folder's lock: one process per run folder (extras/runlog.py's check_out_dir).

``<out>/lock`` holds {"pid", "host", "lrpo": 1} of the process writing the run. It appears whole
or not at all: written under a private name, then hard-linked into place (a link fails if the
lock exists, so of two processes starting at the same instant exactly one wins). A lock is
taken over only when it is proven stale: its process is gone (same host), or it is empty and older
than STALE_AFTER_S (a writer of an older version killed mid-write). A takeover happens under a
second lock (``lock.takeover``), so two processes cannot both take over the same stale lock. A
``lock`` that this code did not write (a user's file, a folder) is never deleted: that is an error.
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

from extras.run_io import fail

LOCK = "lock"
TAKEOVER = "lock.takeover"
STALE_AFTER_S = 60.0   # an empty lock younger than this may be a lock being written


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "lrpo": 1}


def _read(out: Path):
    """(kind, holder): ("none", None), ("ours-format", dict), ("empty", None) or ("foreign", why)."""
    path = out / LOCK
    if not path.exists() and not path.is_symlink():
        return "none", None
    if path.is_symlink() or not path.is_file():
        return "foreign", "not a regular file"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return "none", None
    except (OSError, UnicodeDecodeError) as e:
        return "foreign", f"unreadable: {type(e).__name__}"
    if not text.strip():
        return "empty", None
    try:
        holder = json.loads(text)
    except ValueError:
        # an older version's lock cut short by a kill mid-write starts like ours
        return ("empty", None) if text.lstrip().startswith('{"pid"') else ("foreign", "not a lock of lrpo.py")
    if isinstance(holder, dict) and isinstance(holder.get("pid"), int) and isinstance(holder.get("host"), str):
        return "ours-format", holder
    return "foreign", "not a lock of lrpo.py"


def _alive(holder: dict) -> bool:
    """Whether the lock's owner runs (on another host it cannot be told: assumed to)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except (ProcessLookupError, KeyError, TypeError, ValueError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def _ours(holder) -> bool:
    return isinstance(holder, dict) and holder.get("pid") == os.getpid() \
        and holder.get("host") == socket.gethostname()


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def check_lock(out: Path) -> None:
    """A one-line error if another live process holds ``out``, or if ``out/lock`` is not ours."""
    out = Path(out)
    kind, holder = _read(out)
    if kind == "foreign":
        fail(f"--out {out}: {out / LOCK} is {holder} (lrpo.py did not write it); nothing was touched: "
             f"move it away or pass another --out")
    if kind == "empty" and _age(out / LOCK) < STALE_AFTER_S:
        fail(f"--out {out} is being locked by another process ({out / LOCK} is being written); "
             f"wait for it or pass another --out")
    if kind == "ours-format" and not _ours(holder) and _alive(holder):
        fail(f"--out {out} is in use by process {holder.get('pid')} on {holder.get('host')} "
             f"({out / LOCK}); wait for it, pass another --out, or delete the lock if that "
             f"process is gone")


def _link_new(out: Path, holder: dict, name: str = LOCK) -> bool:
    """Create ``out/name`` holding ``holder``, whole, if it does not exist; False if it does."""
    private = out / f".{name}.{os.getpid()}.{time.monotonic_ns()}"
    private.write_text(json.dumps(holder), encoding="utf-8")
    try:
        os.link(private, out / name)
        return True
    except FileExistsError:
        return False
    except OSError:   # a file system without hard links: exclusive create, then write
        try:
            fd = os.open(out / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(holder))
        return True
    finally:
        private.unlink(missing_ok=True)


PRIVATE = re.compile(r"\.(lock|lock\.takeover)\.(\d+)\.\d+")   # _link_new's private twins


def is_lock_file(name: str) -> bool:
    """A file this module writes in a run folder (the lock, its takeover lock, a private twin a
    kill left behind)."""
    return name in (LOCK, TAKEOVER) or bool(PRIVATE.fullmatch(name))


def _clean_private_twins(out: Path) -> None:
    """Delete the private twins that killed processes of this host left (our names only)."""
    for path in out.glob(".lock*"):
        match = PRIVATE.fullmatch(path.name)
        if match and not _alive({"pid": int(match.group(2)), "host": socket.gethostname()}):
            path.unlink(missing_ok=True)


def take_lock(out: Path) -> None:
    """Hold ``<out>/lock``; a stale one (see the module's docstring) is taken over, with a note."""
    out = Path(out)
    for _ in range(50):
        if _link_new(out, _me()):
            _clean_private_twins(out)
            return
        kind, holder = _read(out)
        if kind == "ours-format" and _ours(holder):
            return
        if kind == "none":
            continue   # released between the two looks
        check_lock(out)   # a live holder, a young empty lock or a foreign file: one line
        if not _link_new(out, _me(), TAKEOVER):   # another process is taking it over
            if _age(out / TAKEOVER) > STALE_AFTER_S:   # ... or died doing so
                (out / TAKEOVER).unlink(missing_ok=True)
            time.sleep(0.05)
            continue
        try:   # under the takeover lock, judge again what is there now
            kind, holder = _read(out)
            if kind == "none" or (kind == "ours-format" and _ours(holder)):
                continue
            check_lock(out)
            print(f"[lrpo] note: taking over the lock of process {(holder or {}).get('pid', '(unknown)')}, "
                  f"which no longer runs")
            (out / LOCK).unlink(missing_ok=True)
        finally:
            _release(out, TAKEOVER)
    check_lock(out)
    fail(f"--out {out}: could not take {out / LOCK}; try again")


def _release(out: Path, name: str) -> None:
    try:
        holder = json.loads((out / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if _ours(holder):
        (out / name).unlink(missing_ok=True)


def release_lock(out) -> None:
    """Delete ``<out>/lock`` only if it is this process's."""
    _release(Path(out), LOCK)
