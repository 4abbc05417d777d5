"""Checkpoints of a run folder: written whole, the last N kept, checked on load.

    <out>/checkpoint/          the newest complete checkpoint: model (safetensors, loadable by
                               from_pretrained), tokenizer, trainer_state.pt (optimizer, router,
                               step, config: tensors and plain data, read with
                               torch.load(weights_only=True)), and the marker ``complete``,
                               written last
    <out>/checkpoint-<step>/   the older complete ones kept (--keep-checkpoints in all, default 2)
    <out>/checkpoint.tmp/      a save in progress
    <out>/checkpoint.failed-step<step>[-k]/   a complete checkpoint that did not load, set aside
                               for a look (never deleted by the run)

A save writes ``checkpoint.tmp/``, marks it complete, renames ``checkpoint/`` to
``checkpoint-<its step>/`` and ``checkpoint.tmp/`` to ``checkpoint/``, then deletes the complete
checkpoints beyond the newest N (a folder's marker first). A kill between any two of these file
system events leaves at least one complete checkpoint, and ``--resume`` takes the newest complete
one that loads: one that does not (truncated, random bytes, non-finite weights) is set aside and
the previous one is used. A checkpoint the user may not read (permissions, an I/O error) is the
reader's problem: one line, nothing touched.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

from extras.run_io import fail, trim_logs

CHECKPOINT, TMP, OLD = "checkpoint", "checkpoint.tmp", "checkpoint.old"   # .old: earlier versions'
MARKER = "complete"   # the last file written into a checkpoint folder: {"step": N}
FAILED = "checkpoint.failed"   # + "-step<N>[-k]": a complete checkpoint that did not load
KEPT = re.compile(r"checkpoint-(\d+)")
READER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EIO, errno.ENXIO, errno.EROFS, errno.ENOSPC,
                 errno.EMFILE, errno.ENFILE, errno.ENOMEM}


class Corrupt(Exception):
    """A checkpoint whose files read but whose content is wrong (non-finite weights, a step that
    disagrees with its marker)."""


def save_checkpoint(run, step: int) -> Path:
    """Write ``checkpoint.tmp/`` (model, tokenizer, trainer state, then the ``complete`` marker),
    then put it in place (see :func:`_put_in_place`), keeping ``--keep-checkpoints``."""
    import torch
    from dataclasses import asdict
    tmp = Path(run.cfg.out) / TMP
    _remove(tmp)
    run.model.save_pretrained(tmp)          # safetensors, loadable by from_pretrained
    run.tokenizer.save_pretrained(tmp)
    torch.save({"step": step, "optimizer": run.optimizer.state_dict(),   # plain data: weights_only loads it
                "router": run.router.state_dict(), "config": asdict(run.cfg)}, tmp / "trainer_state.pt")
    (tmp / MARKER).write_text(json.dumps({"step": step}))
    return _put_in_place(tmp, keep_of(run.cfg))


def keep_of(cfg) -> int:
    return max(1, int(getattr(cfg, "keep_checkpoints", 2) or 2))


def _remove(folder: Path) -> None:
    """Delete a checkpoint folder, its marker first: a crash midway leaves no folder that looks whole."""
    (folder / MARKER).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def _put_in_place(folder: Path, keep: int) -> Path:
    """Make the complete checkpoint ``folder`` the run's ``checkpoint/``: the one it replaces
    becomes ``checkpoint-<step>/`` (an incomplete one is deleted), then :func:`prune`. A crash
    between any two of these steps leaves complete folders (with a marker) and incomplete ones
    (without), never a half-renamed whole."""
    out = folder.parent
    final = out / CHECKPOINT
    if folder != final:
        current = marked_step(final)
        if current is None:
            _remove(final)   # incomplete: what a kill mid-save or mid-delete left
        else:
            kept = out / f"{CHECKPOINT}-{current}"
            if kept != folder:
                _remove(kept)   # the same step kept twice: checkpoint/ holds it whole meanwhile
                final.rename(kept)
        folder.rename(final)
    prune(out, keep)
    return final


def prune(out: Path, keep: int) -> None:
    """Keep the newest ``keep`` complete checkpoints (checkpoint/ and checkpoint-<step>/); delete
    the older ones and what kills left incomplete. Set-aside (failed) checkpoints stay."""
    complete = complete_checkpoints(out)
    for rank, (folder, step) in enumerate(complete):
        if rank >= keep:
            _remove(folder)
        elif folder.name in (TMP, OLD):   # an earlier version's .old, or a .tmp older than checkpoint/
            kept = out / f"{CHECKPOINT}-{step}"
            if kept.exists():
                _remove(folder)
            else:
                folder.rename(kept)
    whole = {folder for folder, _ in complete_checkpoints(out)}
    for folder in _candidates(out):
        if folder not in whole and folder.name != CHECKPOINT and folder.is_dir():
            _remove(folder)   # incomplete: no marker (a kill mid-save or mid-delete)


def _candidates(out: Path) -> list[Path]:
    """checkpoint/, .tmp/, .old/ and checkpoint-<step>/ in ``out``, in this order of preference."""
    out = Path(out)
    kept = sorted((p for p in out.glob(f"{CHECKPOINT}-*") if KEPT.fullmatch(p.name)),
                  key=lambda p: -int(KEPT.fullmatch(p.name).group(1)))
    return [out / CHECKPOINT, out / TMP, out / OLD] + kept


def marked_step(folder: Path) -> int | None:
    """The step in ``folder``'s marker; None when there is none or it is empty or unreadable
    (such a checkpoint is incomplete)."""
    try:
        step = json.loads((Path(folder) / MARKER).read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None


def complete_checkpoints(out) -> list[tuple[Path, int]]:
    """(folder, step) of the complete checkpoints (see :func:`_candidates`), newest first."""
    found = [(step, -rank, folder) for rank, folder in enumerate(_candidates(out))
             if (step := marked_step(folder)) is not None]
    return [(folder, step) for step, _, folder in sorted(found, reverse=True)]


def newest_checkpoint(out) -> tuple[Path, int] | None:
    """(folder, step) of the newest complete checkpoint."""
    found = complete_checkpoints(out)
    return found[0] if found else None


def set_aside(folder: Path, step: int) -> Path:
    """Rename a checkpoint that did not load to a name of its own (never over another one)."""
    base = folder.parent / f"{FAILED}-step{step}"
    target, k = base, 1
    while target.exists() or target.is_symlink():
        k += 1
        target = Path(f"{base}-{k}")
    folder.rename(target)
    return target


def unreadable_file(folder: Path) -> tuple[Path, OSError] | None:
    """The first file of ``folder`` this user cannot open and read (a permission or I/O error),
    with the error; None if every file reads."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as e:
        return folder, e
    for name in names:
        path = folder / name
        if path.is_dir():
            continue
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as e:
            return path, e
    return None


def reader_problem(e: BaseException) -> bool:
    """A permission or I/O error: the reader's (or the disk's) problem, not the checkpoint's."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in READER_ERRNOS:
            return True
        e = e.__cause__ or e.__context__
    return False


def load_checkpoint(run) -> int:
    """Restore the model, optimizer and router from the newest complete checkpoint that loads
    (one that does not is named in one line and set aside as checkpoint.failed-step<N>/; the next
    is tried), put it in place, trim the logs to its step and return it. A file this user cannot
    read stops with one line and touches nothing."""
    out = Path(run.cfg.out)
    found = complete_checkpoints(out)
    if not found:
        fail(f"--resume: no complete checkpoint in {out}")
    for folder, step in found:
        problem = unreadable_file(folder)
        if problem:
            path, e = problem
            fail(f"--resume: cannot read {path} ({e.strerror or type(e).__name__}); nothing was touched: "
                 f"resume as a user who may read {out}, or fix its permissions or disk")
        try:
            _load_into(run, folder)
        except SystemExit:
            raise
        except Exception as e:   # truncated or random bytes, non-finite weights: any reader's error
            if reader_problem(e):
                fail(f"--resume: reading {folder} failed ({type(e).__name__}: {e}); nothing was touched: "
                     f"fix the permissions or the disk and resume again")
            why = " ".join(f"{type(e).__name__}: {e}".split())[:200]
            try:
                aside = set_aside(folder, step)
            except OSError as moved:
                fail(f"--resume: the checkpoint {folder} (step {step}) does not load ({why}), and "
                     f"could not be set aside ({moved.strerror}); nothing was deleted")
            print(f"[lrpo] warning: the checkpoint {folder} (step {step}) does not load ({why}); "
                  f"set aside as {aside}")
            continue
        _put_in_place(folder, keep_of(run.cfg))   # after a crash mid-save, the newest complete one goes back
        trim_logs(out, step)
        return step
    fail(f"--resume: no checkpoint in {out} loads (see the warnings above; each was set aside as "
         f"{FAILED}-step<N>/); start a new run with another --out")


def non_finite(named_tensors) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity."""
    import torch
    for name, t in named_tensors:
        if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all():
            return name
    return None


def _load_into(run, path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM
    saved = torch.load(path / "trainer_state.pt", weights_only=True)   # tensors and plain data: runs no code
    if saved["step"] != marked_step(path):
        raise Corrupt(f"trainer_state.pt is of step {saved['step']}, its marker says {marked_step(path)}")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=next(run.model.parameters()).dtype)
    bad = non_finite(model.state_dict().items())
    if bad:
        raise Corrupt(f"weight {bad} holds non-finite values")
    moments = [(f"optimizer state {k}/{name}", t) for k, state in saved["optimizer"]["state"].items()
               for name, t in state.items()]
    bad = non_finite(moments)
    if bad:
        raise Corrupt(f"{bad} holds non-finite values")
    run.model.load_state_dict(model.state_dict())
    run.optimizer.load_state_dict(saved["optimizer"])
    try:
        run.router.load_state_dict(saved["router"])
    except ValueError as e:
        fail(f"{path}: {e}; the data or --langs of this run changed since it was saved")


def incomplete_checkpoint(path) -> str | None:
    """Why ``path`` (given to evaluate.py as a model) is not a loadable checkpoint of a run: a
    run folder itself, or a checkpoint folder without its ``complete`` marker; None otherwise."""
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / "config.json").is_file() and any((path / n).exists() for n in (CHECKPOINT, "metrics.jsonl")):
        newest = newest_checkpoint(path)
        where = f"; its newest complete checkpoint is {newest[0]}" if newest else \
            " and holds no complete checkpoint"
        return f"{path} is a run folder of lrpo.py, not a model{where}"
    if (path / "trainer_state.pt").exists() or path.name in (TMP, OLD) or path.name.startswith(CHECKPOINT + "."):
        if marked_step(path) is None:
            newest = newest_checkpoint(path.parent)
            where = f"; the run's newest complete one is {newest[0]}" if newest else ""
            return f"{path} is an incomplete checkpoint (no '{MARKER}' marker: a save cut short){where}"
    return None
