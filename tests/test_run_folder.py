"""The run folder against a hostile-but-realistic user (issue 22): a user's folder is never
touched, a corrupt checkpoint falls back to the previous one, a lock keeps a second process out,
SIGTERM saves, a diverged model is never saved, hand-edited config.json and bad data are one-line
errors, and kill -9 at random points resumes to the uninterrupted run."""
import copy
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import lrpo
from extras import cli, recipes, runlog, setup
from test_runlog import Crash, crash_points, make_run, snapshot, train_a_little

ROOT = Path(lrpo.__file__).parent
SMALL = ["--questions-per-step", "4", "--group-size", "4", "--max-new-tokens", "8", "--eval-size", "4",
         "--no-progress", "--eval-every", "0", "--samples-per-step", "1"]


def one_line_error(err) -> str:
    message = str(err.value)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def no_model(monkeypatch):
    from extras import models
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setattr(models, "check_model", lambda *a, **k: None)   # "--model x" stands for any


# ---------------------------------------------------------------------------------------------
# 1. a folder that is not ours; issue 23: default folders are numbered, data errors come first

def test_a_users_folder_is_refused_and_left_untouched(tmp_path, monkeypatch):
    no_model(monkeypatch)
    user = tmp_path / "mine"
    (user / "checkpoint").mkdir(parents=True)
    (user / "checkpoint" / "notes.txt").write_text("my notes")
    (user / "training.png").write_bytes(b"my plot")
    before = sorted((p.relative_to(user), p.read_bytes()) for p in user.rglob("*") if p.is_file())
    with pytest.raises(SystemExit) as err:
        lrpo.main(["--out", str(user), "--steps", "1"])
    assert "is not a run folder of lrpo.py" in one_line_error(err)
    assert sorted((p.relative_to(user), p.read_bytes()) for p in user.rglob("*") if p.is_file()) == before
    runlog.check_out_dir(SimpleNamespace(out=str(tmp_path / "empty"), resume=False, save_every=1))


def test_a_second_identical_command_gets_a_numbered_folder_and_resume_the_newest(tmp_path, monkeypatch,
                                                                                  capsys):
    monkeypatch.chdir(tmp_path)
    first = lrpo.parse_args(["--steps", "1"]).out
    assert first == "runs/lrpo-toy-toy-s0"
    Path(first).mkdir(parents=True)
    runlog.write_config(lrpo.parse_args(["--steps", "1"]))
    second = lrpo.parse_args(["--steps", "1"]).out
    assert second == first + "-2" and f"--out {second} --resume" in capsys.readouterr().out
    assert lrpo.parse_args(["--data", "/d/my.jsonl", "--model", "org/m", "--seed", "3", "--steps", "1"]).out \
        == "runs/lrpo-my-m-s3"
    Path(second).mkdir()
    runlog.write_config(lrpo.parse_args(["--steps", "1", "--out", second]))
    assert lrpo.parse_args(["--resume"]).out == second
    assert f"continuing {second}, the newest of 2" in capsys.readouterr().out


def test_a_missing_data_file_is_named_before_the_folder_collision(tmp_path, monkeypatch):
    no_model(monkeypatch)
    out = tmp_path / "run"
    out.mkdir()
    runlog.write_config(lrpo.parse_args(["--out", str(out), "--steps", "1"]))
    with pytest.raises(SystemExit) as err:
        lrpo.main(["--out", str(out), "--data", "/nonexistent.jsonl", "--model", "x", "--steps", "1"])
    assert "/nonexistent.jsonl: no such file" in one_line_error(err)


# ---------------------------------------------------------------------------------------------
# 2. a checkpoint that does not load; markers that are empty

@pytest.mark.parametrize("damage", ["truncated weights", "random trainer state"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_complete_old_one(tmp_path, monkeypatch, tiny_qwen,
                                                                          capsys, damage):
    model, tok = tiny_qwen
    fresh = copy.deepcopy(model)
    run = make_run(model, tok, tmp_path)
    train_a_little(run, seed=1)
    good = snapshot(run)
    runlog.save_checkpoint(run, 1)
    train_a_little(run, seed=2)
    crash_points(monkeypatch)["after .tmp -> checkpoint"]()   # step 2 in place, step 1 still in .old
    with pytest.raises(Crash):
        runlog.save_checkpoint(run, 2)
    monkeypatch.undo()
    if damage == "truncated weights":
        weights = tmp_path / "checkpoint" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        (tmp_path / "checkpoint" / "trainer_state.pt").write_bytes(os.urandom(4096))
    again = make_run(fresh, tok, tmp_path)
    assert runlog.load_checkpoint(again) == 1
    warning = [l for l in capsys.readouterr().out.splitlines() if "does not load" in l]
    assert len(warning) == 1 and "(step 2)" in warning[0]
    for k, v in good[0].items():
        torch.testing.assert_close(again.model.state_dict()[k], v, rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.glob("checkpoint*")) == ["checkpoint", "checkpoint.failed-step2"]
    assert runlog.newest_checkpoint(tmp_path) == (tmp_path / "checkpoint", 1)


def saved_steps(model, tok, out, steps, keep=2):
    """A run folder of ``out`` with checkpoints of ``steps`` saved in turn; the weights of each."""
    run = make_run(model, tok, out)
    run.cfg.keep_checkpoints = keep
    weights = {}
    for step in steps:
        train_a_little(run, seed=step)
        weights[step] = {k: v.clone() for k, v in run.model.state_dict().items()}
        runlog.save_checkpoint(run, step)
    return run, weights


def test_the_last_n_checkpoints_are_kept_and_a_rotten_newest_falls_back(tmp_path, tiny_qwen, capsys):
    """Issue 34: the newest checkpoint rots on disk after a clean save; the previous one is kept
    (--keep-checkpoints 2 by default) and used; --keep-checkpoints 3 keeps three."""
    model, tok = tiny_qwen
    fresh = copy.deepcopy(model)
    run, weights = saved_steps(model, tok, tmp_path / "two", (1, 2, 3))
    assert [s for _, s in runlog.complete_checkpoints(tmp_path / "two")] == [3, 2]
    assert sorted(p.name for p in (tmp_path / "two").glob("checkpoint*")) == ["checkpoint", "checkpoint-2"]
    w = tmp_path / "two" / "checkpoint" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:500])   # rots after a clean save
    again = make_run(copy.deepcopy(fresh), tok, tmp_path / "two")
    assert runlog.load_checkpoint(again) == 2
    for k, v in weights[2].items():
        torch.testing.assert_close(again.model.state_dict()[k], v, rtol=0, atol=0)
    assert "set aside as" in capsys.readouterr().out
    _, _ = saved_steps(copy.deepcopy(fresh), tok, tmp_path / "three", (1, 2, 3, 4), keep=3)
    assert [s for _, s in runlog.complete_checkpoints(tmp_path / "three")] == [4, 3, 2]


def test_set_aside_checkpoints_are_never_deleted_and_nan_weights_do_not_load(tmp_path, tiny_qwen, capsys):
    """Issue 34: each checkpoint that fails gets a name of its own (the old single
    checkpoint.failed slot deleted step 3 to set aside step 2); a checkpoint whose weights hold a
    NaN is set aside, not loaded; when none loads, the folder says so and keeps them all."""
    from safetensors.torch import load_file, save_file
    model, tok = tiny_qwen
    fresh = copy.deepcopy(model)
    out = tmp_path / "run"
    _, weights = saved_steps(model, tok, out, (1, 2, 3), keep=3)
    first = out / "checkpoint" / "model.safetensors"           # step 3: a NaN flipped in
    tensors = load_file(first)
    name = sorted(tensors)[0]
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, first, metadata={"format": "pt"})
    (out / "checkpoint-2" / "trainer_state.pt").write_bytes(os.urandom(512))   # step 2: random bytes
    (out / "checkpoint.failed-step3").mkdir()   # a set-aside folder from an earlier resume
    (out / "checkpoint.failed-step3" / "notes").write_text("look at me")
    again = make_run(copy.deepcopy(fresh), tok, out)
    assert runlog.load_checkpoint(again) == 1
    printed = capsys.readouterr().out
    assert "non-finite" in printed and f"weight {name}" in printed
    for k, v in weights[1].items():
        torch.testing.assert_close(again.model.state_dict()[k], v, rtol=0, atol=0)
    assert sorted(p.name for p in out.glob("checkpoint*")) == [
        "checkpoint", "checkpoint.failed-step2", "checkpoint.failed-step3", "checkpoint.failed-step3-2"]
    assert (out / "checkpoint.failed-step3" / "notes").read_text() == "look at me"
    assert runlog.marked_step(out / "checkpoint.failed-step3-2") == 3
    (out / "checkpoint" / "model.safetensors").write_bytes(b"rot")
    with pytest.raises(SystemExit, match="no checkpoint in .* loads") as err:
        runlog.load_checkpoint(make_run(copy.deepcopy(fresh), tok, out))
    one_line_error(err)
    assert len(list(out.glob("checkpoint.failed*"))) == 4


def test_a_checkpoint_the_user_may_not_read_is_one_line_and_touched_nothing(tmp_path, tiny_qwen, monkeypatch):
    """Issue 34: a teammate without read permission resumes: the only good checkpoint was set
    aside as failed; now it is one line and nothing is moved."""
    import builtins
    from extras import checkpoints
    model, tok = tiny_qwen
    out = tmp_path / "run"
    saved_steps(model, tok, out, (1, 2))
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    weights = out / "checkpoint" / "model.safetensors"
    weights.chmod(0)
    if os.geteuid() == 0:   # root reads every file: refuse as the kernel would refuse another user
        def open_as_teammate(path, *a, **k):
            if os.path.exists(path) and os.stat(path).st_mode & 0o777 == 0:
                raise PermissionError(13, "Permission denied", str(path))
            return builtins.open(path, *a, **k)
        monkeypatch.setattr(checkpoints, "open", open_as_teammate, raising=False)
    try:
        with pytest.raises(SystemExit, match=r"cannot read .*model.safetensors \(Permission denied\); "
                                             r"nothing was touched") as err:
            runlog.load_checkpoint(make_run(copy.deepcopy(model), tok, out))
    finally:
        weights.chmod(0o644)
    one_line_error(err)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def test_an_io_error_while_loading_is_the_readers_problem(tmp_path, tiny_qwen, monkeypatch):
    """A permission or I/O error raised inside the loader (even as root, or on a flaky disk) is
    one line and sets nothing aside."""
    import errno
    import transformers
    model, tok = tiny_qwen
    out = tmp_path / "run"
    saved_steps(model, tok, out, (1, 2))
    def eio(*a, **k):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", eio)
    with pytest.raises(SystemExit, match="nothing was touched") as err:
        runlog.load_checkpoint(make_run(copy.deepcopy(model), tok, out))
    one_line_error(err)
    assert not list(out.glob("checkpoint.failed*"))
    assert [s for _, s in runlog.complete_checkpoints(out)] == [2, 1]


@pytest.mark.parametrize("marker", ["", "{", "[]", '{"step": "x"}'])
def test_an_empty_or_unreadable_marker_is_an_incomplete_checkpoint(tmp_path, marker):
    (tmp_path / "config.json").write_text(json.dumps({"method": "lrpo", "group_size": 8, "orig_lang_min": 2}))
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "complete").write_text(marker)
    assert runlog.newest_checkpoint(tmp_path) is None
    with pytest.raises(SystemExit) as err:
        runlog.check_out_dir(SimpleNamespace(out=str(tmp_path), resume=True, save_every=1))
    assert "no complete checkpoint" in one_line_error(err)


# ---------------------------------------------------------------------------------------------
# 3. the lock

def test_a_second_process_on_the_same_out_is_refused_and_a_dead_ones_lock_taken_over(tmp_path, capsys):
    import socket
    out = tmp_path / "run"
    out.mkdir()
    cfg = SimpleNamespace(out=str(out), resume=False, save_every=1)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / "lock").write_text(json.dumps({"pid": other.pid, "host": socket.gethostname()}))
        with pytest.raises(SystemExit) as err:
            runlog.check_out_dir(cfg)
        assert f"is in use by process {other.pid}" in one_line_error(err)
    finally:
        other.kill()
        other.wait()
    runlog.check_out_dir(cfg)   # that process is gone: its lock is taken over
    assert f"taking over the lock of process {other.pid}" in capsys.readouterr().out
    assert json.loads((out / "lock").read_text())["pid"] == os.getpid()
    runlog.release_lock(out)
    assert not (out / "lock").exists()


def killed_mid_write(monkeypatch):
    """Every file opened for writing from now on is killed after it was opened (and truncated),
    before its first byte: what kill -9 inside a write leaves."""
    import builtins
    import io
    real_open = builtins.open
    class Killed:
        def __init__(self, f):
            self.f = f
        def __enter__(self):
            return self
        def __exit__(self, *a):
            self.f.close()
        def write(self, *a):
            self.f.close()
            raise Crash
    def opener(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        return Killed(f) if any(c in mode for c in "wa") else f
    monkeypatch.setattr(builtins, "open", opener)
    monkeypatch.setattr(io, "open", opener)
    monkeypatch.setattr(Path, "open", lambda self, mode="r", *a, **k: opener(self, mode, *a, **k))


def test_a_kill_inside_write_config_or_trim_logs_leaves_the_old_files(tmp_path, monkeypatch):
    """Issue 34: a kill inside write_config left config.json at 0 bytes (no resume from the
    CLI); inside trim_logs it emptied metrics.jsonl. Both now replace the file whole."""
    out = tmp_path / "run"
    out.mkdir()
    cfg = lrpo.parse_args(["--out", str(out), "--steps", "3"])
    runlog.write_config(cfg)
    config = (out / "config.json").read_text()
    for name in runlog.LOGS:
        runlog.append(cfg, name, [{"step": s} for s in (1, 2, 3, 4, 5)])
    logs = {name: (out / name).read_text() for name in runlog.LOGS}
    killed_mid_write(monkeypatch)
    cfg.steps = 9
    with pytest.raises(Crash):
        runlog.write_config(cfg)
    with pytest.raises(Crash):
        runlog.trim_logs(out, 4)
    monkeypatch.undo()
    assert (out / "config.json").read_text() == config
    assert lrpo.parse_args(["--out", str(out), "--resume"]).steps == 3
    assert {name: (out / name).read_text() for name in runlog.LOGS} == logs
    runlog.trim_logs(out, 4)   # and without the kill, the trim happens
    assert [r["step"] for r in runlog.read(out, "metrics.jsonl")] == [1, 2, 3, 4]


def test_a_users_file_named_lock_is_never_deleted(tmp_path, monkeypatch):
    """Issue 34: a user's folder holding only a file named `lock` ("taking over the lock of
    process None": the file was deleted); a folder named lock; an unreadable lock."""
    no_model(monkeypatch)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "lock").write_text("my shopping list")
    with pytest.raises(SystemExit, match=r"lrpo.py did not write it\); nothing was touched") as err:
        runlog.check_out_dir(SimpleNamespace(out=str(user), resume=False, save_every=1))
    one_line_error(err)
    assert (user / "lock").read_text() == "my shopping list" and len(list(user.iterdir())) == 1
    (user / "lock").unlink()
    (user / "lock").mkdir()
    with pytest.raises(SystemExit, match=r"is not a regular file") as err:
        lrpo.main(["--out", str(user), "--steps", "1"])
    one_line_error(err)
    assert (user / "lock").is_dir()


def test_an_empty_lock_is_in_use_until_its_age_says_it_is_stale(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "lock").write_text("")   # another process between creating and writing it
    cfg = SimpleNamespace(out=str(out), resume=False, save_every=1)
    with pytest.raises(SystemExit, match="is being locked by another process") as err:
        runlog.check_out_dir(cfg)
    one_line_error(err)
    assert (out / "lock").read_text() == ""
    old = time.time() - 3600
    os.utime(out / "lock", (old, old))   # an hour old: its writer died mid-write
    runlog.check_out_dir(cfg)
    assert json.loads((out / "lock").read_text())["pid"] == os.getpid()
    runlog.release_lock(out)


def _race_for_the_lock(out, go, done, results):
    go.wait()
    try:
        runlog.take_lock(Path(out))
        results.put("held")
    except SystemExit:
        results.put("refused")
    done.wait()   # stay alive until the other one has tried: a live holder is not stale
    os._exit(0)


@pytest.mark.parametrize("stale", [False, True])
def test_two_processes_taking_the_lock_at_the_same_instant_never_both_hold_it(tmp_path, stale):
    """Issue 34: 19/200 trials both held the lock (100/200 over a stale one)."""
    import multiprocessing
    import socket
    ctx = multiprocessing.get_context("fork")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    for trial in range(12):
        out = tmp_path / f"t{trial}"
        out.mkdir()
        if stale:
            (out / "lock").write_text(json.dumps({"pid": int(dead), "host": socket.gethostname()}))
        go, done, results = ctx.Event(), ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_race_for_the_lock, args=(str(out), go, done, results)) for _ in range(2)]
        for p in procs:
            p.start()
        go.set()
        got = sorted(results.get(timeout=30) for _ in procs)
        done.set()
        for p in procs:
            p.join(timeout=30)
        assert got == ["held", "refused"], (trial, got)


# ---------------------------------------------------------------------------------------------
# 3b. paths and files that ended in a traceback (issue 34)

def test_out_paths_that_cannot_be_written_are_one_line(tmp_path, monkeypatch):
    from extras import run_lock
    cfg = lambda out: SimpleNamespace(out=str(out), resume=False, save_every=1)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    for out, message in ((tmp_path / "afile" / "run", r"cannot write there \(Not a directory"),
                         (tmp_path / "dangling", r"is a symbolic link to .*gone, which does not exist")):
        with pytest.raises(SystemExit, match=message) as err:
            runlog.check_out_dir(cfg(out))
        one_line_error(err)
    assert not (tmp_path / "gone").exists()
    (tmp_path / "ro").mkdir()
    def read_only(*a, **k):   # what a read-only folder answers (root ignores the mode bits)
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro" / "lock"))
    monkeypatch.setattr(run_lock, "_link_new", read_only)
    with pytest.raises(SystemExit, match=r"cannot write there \(Permission denied") as err:
        runlog.check_out_dir(cfg(tmp_path / "ro"))
    one_line_error(err)


def test_a_full_disk_on_resume_is_one_line_and_leaves_the_logs(tmp_path, monkeypatch):
    """Issue 34: a full disk while the resume trims the logs (or writes config.json) was a traceback."""
    import errno
    from extras import models, run_io
    monkeypatch.setattr(models, "check_model", lambda *a, **k: None)
    out = tmp_path / "run"
    out.mkdir()
    cfg = lrpo.parse_args(["--out", str(out), "--steps", "3"])
    runlog.append(cfg, "metrics.jsonl", [{"step": s} for s in (1, 2, 3)])
    before = (out / "metrics.jsonl").read_text()
    real_fsync = os.fsync
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(run_io.os, "fsync", full)
    with pytest.raises(SystemExit, match=r"No space left on device\); no checkpoint was saved: free space") as err:
        with runlog.locked_run(cfg):
            runlog.trim_logs(out, 1)
    one_line_error(err)
    monkeypatch.setattr(run_io.os, "fsync", real_fsync)
    assert (out / "metrics.jsonl").read_text() == before
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]   # no cut twin left


def test_a_private_twin_left_by_a_kill_is_not_a_users_file(tmp_path):
    out = tmp_path / "new"
    out.mkdir()
    (out / ".lock.999999999.12").write_text("{}")   # killed between writing its twin and linking it
    runlog.check_out_dir(SimpleNamespace(out=str(out), resume=False, save_every=1))
    assert sorted(p.name for p in out.iterdir()) == ["lock"]
    runlog.release_lock(out)


def test_a_folder_named_like_data_and_a_cut_parquet_are_one_line(tmp_path, monkeypatch):
    no_model(monkeypatch)
    (tmp_path / "x.jsonl").mkdir()
    (tmp_path / "five.parquet").write_bytes(b"PAR1x")
    for path, message in ((tmp_path / "x.jsonl", r"x\.jsonl: a folder, not a \.jsonl file"),
                          (tmp_path / "five.parquet", r"five\.parquet: not a readable Parquet file")):
        with pytest.raises(SystemExit, match=message) as err:
            lrpo.main(["--data", str(path), "--model", "x", "--out", str(tmp_path / "run"), "--steps", "1"])
        one_line_error(err)


def test_ctrl_c_during_start_up_is_one_line(tmp_path, monkeypatch):
    def interrupted(cfg):
        raise KeyboardInterrupt
    monkeypatch.setattr(setup, "load_data", interrupted)
    with pytest.raises(SystemExit, match=r"interrupted \(Ctrl-C\) outside a training step; no checkpoint") as err:
        lrpo.main(["--out", str(tmp_path / "run"), "--steps", "1"])
    one_line_error(err)


def test_sighup_is_handled_as_sigterm():
    """Issue 34: an ssh session closing killed the run at once, like kill -9, leaving a stale lock."""
    with runlog.first_ctrl_c_stops() as stop:
        os.kill(os.getpid(), signal.SIGHUP)
        assert stop["requested"] == signal.SIGHUP
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL


def test_evaluate_names_an_incomplete_checkpoint_and_a_run_folder(tmp_path, tiny_qwen):
    import evaluate
    model, tok = tiny_qwen
    out = tmp_path / "run"
    run, _ = saved_steps(model, tok, out, (1,))
    model.save_pretrained(out / "checkpoint.tmp")   # a save cut short before its marker
    tok.save_pretrained(out / "checkpoint.tmp")
    with pytest.raises(SystemExit, match=r"checkpoint\.tmp is an incomplete checkpoint \(no 'complete' marker.*"
                                         r"newest complete one is .*run/checkpoint$") as err:
        evaluate.load_model(str(out / "checkpoint.tmp"), "cpu")
    one_line_error(err)
    with pytest.raises(SystemExit, match=r"run is a run folder of lrpo.py, not a model; its newest complete "
                                         r"checkpoint is .*run/checkpoint$"):
        evaluate.load_model(str(out), "cpu")
    from extras.models import ModelLoadError, check_model
    with pytest.raises(ModelLoadError, match="incomplete checkpoint"):
        check_model(str(out / "checkpoint.tmp"), online=False)
    evaluate.load_model(str(out / "checkpoint"), "cpu")   # a complete one loads


# ---------------------------------------------------------------------------------------------
# 4. SIGTERM

def test_sigterm_finishes_the_step_saves_and_exits_non_zero(tmp_path, monkeypatch, toy_model_and_tokenizer,
                                                             capsys):
    real = lrpo.train_step
    def step_then_term(run, step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)   # arrives in the middle of step 2
        return real(run, step)
    monkeypatch.setattr(lrpo, "train_step", step_then_term)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as err:
        lrpo.main(SMALL + ["--steps", "20", "--save-every", "10", "--out", str(out)])
    assert err.value.code == 128 + signal.SIGTERM
    assert runlog.newest_checkpoint(out) == (out / "checkpoint", 2)
    assert f"`python lrpo.py --out {out} --resume`" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL and not (out / "lock").exists()
    with runlog.first_ctrl_c_stops() as stop:   # a second signal: out at once
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop["requested"] == signal.SIGTERM
        with pytest.raises(SystemExit) as again:
            os.kill(os.getpid(), signal.SIGTERM)
        assert again.value.code == 128 + signal.SIGTERM


# ---------------------------------------------------------------------------------------------
# 5. the divergence guard

def test_a_diverging_run_names_the_term_stops_and_keeps_the_last_good_checkpoint(
        tmp_path, monkeypatch, toy_model_and_tokenizer, capsys):
    import loss
    real = loss.policy_loss
    def kl_blows_up_from_step_3(*args, **kwargs):
        value, m = real(*args, **kwargs)
        if calls.append(1) or len(calls) > 2:
            m = {**m, "kl_loss": torch.tensor(float("inf"))}
            value = value + m["kl_loss"]
        return value, m
    calls = []
    monkeypatch.setattr(loss, "policy_loss", kl_blows_up_from_step_3)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as err:
        lrpo.main(SMALL + ["--steps", "10", "--save-every", "1", "--out", str(out)])
    message = one_line_error(err)
    assert "3 optimizer steps in a row skipped" in message and "kl_loss" in message
    assert "the checkpoint of step 2 is kept" in message
    printed = capsys.readouterr().out
    assert "step 3: non-finite kl_loss, loss; skipped an optimizer step (1 in a row)" in printed
    assert "not saving step 3" in printed and "not saving step 4" in printed
    assert runlog.newest_checkpoint(out) == (out / "checkpoint", 2)


def test_a_run_that_ends_without_its_last_checkpoint_exits_non_zero(tmp_path, monkeypatch,
                                                                    toy_model_and_tokenizer, capsys):
    """Issue 34: the last step's update skipped (`--lr 1e3 --steps 2`) exited 0 with no
    checkpoint of step 2; `--epochs 1e-9` trained "step 0 of 0" and exited 0."""
    import loss
    real = loss.policy_loss
    calls = []
    def last_step_blows_up(*args, **kwargs):
        value, m = real(*args, **kwargs)
        calls.append(1)
        return (value * float("nan"), m) if len(calls) > 1 else (value, m)
    monkeypatch.setattr(loss, "policy_loss", last_step_blows_up)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as err:
        lrpo.main(SMALL + ["--steps", "2", "--save-every", "1", "--out", str(out), "--eval-size", "0"])
    message = one_line_error(err)
    assert "reached step 2 but did not save it" in message and "newest checkpoint is of step 1" in message
    assert runlog.newest_checkpoint(out) == (out / "checkpoint", 1)
    monkeypatch.undo()
    with pytest.raises(SystemExit, match=r"--epochs 1e-09 of \d+ training questions .* is 0 steps") as err:
        lrpo.main(SMALL + ["--epochs", "1e-9", "--out", str(tmp_path / "none")])
    one_line_error(err)


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_last_checkpoint(tmp_path, tiny_qwen, monkeypatch):
    import errno
    model, tok = tiny_qwen
    run, _ = saved_steps(model, tok, tmp_path / "run", (1,))
    run.guard = None
    def full(*a, **k):
        Path(a[0]).mkdir()
        (Path(a[0]) / "half.bin").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(run.model, "save_pretrained", full)
    with pytest.raises(SystemExit, match=r"could not save the checkpoint of step 2 .*No space left on device.*"
                                         r"step 1 is kept") as err:
        runlog.save_if_sound(run, 2, None)
    one_line_error(err)
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint*")) == ["checkpoint"]


def test_a_non_finite_weight_stops_the_run(tmp_path, tiny_qwen):
    from extras.divergence import Diverged, Guard
    model, _ = tiny_qwen
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    with pytest.raises(Diverged, match=r"weight model.norm.weight is non-finite after the update of step 4"):
        Guard().stepped(model, 3)


# ---------------------------------------------------------------------------------------------
# 6. config.json edited by hand

@pytest.mark.parametrize("edit,message", [
    ({"lr": "fast"}, r"lr = \"fast\" is not a float"),
    ({"lr": [1, 2]}, r"lr = \[1, 2\] is not a float"),
    ({"group_size": 8.5}, r"group_size = 8.5 is not an int"),
    ({"progress": 1}, r"progress = 1 is not a bool"),
    ({"method": "magic"}, r"method = \"magic\" is not one of lrpo, grpo"),
    ({"speed": "max"}, r"unknown key 'speed'"),
])
def test_a_hand_edited_config_is_a_one_line_error_on_resume(tmp_path, edit, message):
    out = tmp_path / "run"
    out.mkdir()
    runlog.write_config(lrpo.parse_args(["--out", str(out), "--steps", "1"]))
    saved = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**saved, **edit}))
    with pytest.raises(SystemExit, match=message) as err:
        lrpo.parse_args(["--out", str(out), "--resume"])
    one_line_error(err)


def test_a_deleted_config_key_is_named_and_plot_never_comes_from_the_file(tmp_path):
    """Issue 34: a deleted key resumed with the code default (32 instead of 8) and was written
    back; `"plot": "/other/dir"` in config.json redrew another folder's plots."""
    out = tmp_path / "run"
    out.mkdir()
    runlog.write_config(lrpo.parse_args(["--out", str(out), "--steps", "1", "--max-new-tokens", "8"]))
    saved = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**saved, "plot": str(tmp_path / "other")}))
    assert lrpo.parse_args(["--out", str(out), "--resume"]).plot is None
    del saved["max_new_tokens"]
    (out / "config.json").write_text(json.dumps(saved))
    with pytest.raises(SystemExit, match=r"the key 'max_new_tokens' is missing") as err:
        lrpo.parse_args(["--out", str(out), "--resume"])
    one_line_error(err)


def test_a_changed_data_file_is_named_on_resume_unless_allowed(tmp_path, capsys):
    """Issue 34: the data file changed at the same path between runs: resumed on the new data."""
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join(rows()))
    out = tmp_path / "run"
    out.mkdir()
    cfg = lrpo.parse_args(["--out", str(out), "--steps", "1", "--data", str(path), "--model", "x"])
    runlog.write_config(cfg)
    runlog.write_data_fingerprint(cfg)
    cfg.resume = True
    runlog.check_data_unchanged(cfg)   # unchanged: silent
    os.utime(path, (1, 1))             # touched only: the same data
    runlog.check_data_unchanged(cfg)
    path.write_bytes(b"\n".join(rows()).replace(b"Frage 1", b"Frage 9"))   # same size, new content
    with pytest.raises(SystemExit, match=r"--data .*d\.jsonl changed since the run was saved \(its content "
                                         r"differs\); .*--allow-data-change") as err:
        runlog.check_data_unchanged(cfg)
    one_line_error(err)
    cfg = lrpo.parse_args(["--out", str(out), "--resume", "--allow-data-change"])
    runlog.check_data_unchanged(cfg)
    assert "going on (--allow-data-change)" in capsys.readouterr().out
    assert "allow_data_change" not in json.loads((out / "config.json").read_text())


def test_train_test_overlap_is_counted(tmp_path, capsys):
    train = write(tmp_path / "train.jsonl", b"\n".join(rows()))
    test = write(tmp_path / "held.jsonl", b"\n".join(rows()[1:3] + [json.dumps({**ROW, "question": "Neu?"}).encode()]))
    cfg = lrpo.parse_args(["--data", train, "--test-data", test, "--model", "x", "--out", str(tmp_path / "r"),
                           "--steps", "1"])
    setup.load_data(cfg)
    assert "2 of 3 held-out questions also appear in the training data" in capsys.readouterr().out


def test_every_field_outside_may_change_is_refused_with_a_new_value_on_resume(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    first = lrpo.parse_args(["--out", str(out), "--steps", "1", "--model", "m", "--data", "d.jsonl"])
    runlog.write_config(first)
    # only the run's length and logging and knobs of memory and speed may change: a field added
    # to MAY_CHANGE_ON_RESUME (say kl_coef) fails here
    may_change = {"steps", "epochs", "eval_every", "save_every", "samples_per_step", "progress", "threads",
                  "device", "compile", "micro_batch", "logprob_micro_batch", "gradient_checkpointing",
                  "ref_on_cpu", "max_skipped", "keep_checkpoints", "allow_data_change"}
    assert set(cli.MAY_CHANGE_ON_RESUME) == may_change
    for f in fields(lrpo.Config):
        if f.name in may_change or f.name in ("out", "resume", "plot"):   # --plot: of this invocation
            continue
        value = getattr(first, f.name)
        choices = cli.CHOICES.get(f.name)
        if choices:
            new = next(c for c in choices if c != value)
        elif value is None:   # a field left to its preset or default
            new = {int: 2, float: 0.5, bool: True, str: "other"}[f.type]
        elif isinstance(value, bool):
            new = not value
        elif isinstance(value, (int, float)):
            new = value + 1
        else:
            new = "other"
        flag = [runlog.flag(f.name)] if isinstance(new, bool) and new else \
            [f"--no-{runlog.flag(f.name)[2:]}"] if isinstance(new, bool) else [runlog.flag(f.name), str(new)]
        with pytest.raises(SystemExit, match=rf"^error: {runlog.flag(f.name)} .* contradicts the saved run's "
                                             rf"{f.name} "):
            lrpo.parse_args(["--out", str(out), "--resume"] + flag)


# ---------------------------------------------------------------------------------------------
# 6b. every numeric flag in its range (issue 34)

NUMERIC = [f.name for f in fields(lrpo.Config) if f.type in (int, float)]


def test_every_numeric_flag_has_a_range():
    assert sorted(runlog.RANGES) == sorted(NUMERIC)


def bad_values(name):
    low, high, low_open, high_open = runlog.RANGES[name]
    is_float = next(f.type for f in fields(lrpo.Config) if f.name == name) is float
    below = low if low_open else (low - (0.5 if is_float else 1))
    values = [below] + ([high if high_open else high + 1] if high != runlog.INF else [])
    return [str(v) for v in values] + (["nan", "inf", "-inf"] if is_float else [])


@pytest.mark.parametrize("name,value", [(n, v) for n in NUMERIC for v in bad_values(n)] + [
    ("kl_coef", "nan"), ("max_skipped", "-1"), ("seed", "-1"), ("epochs", "inf"), ("lr", "nan"),
    ("weight_decay", "nan"), ("router_eps_decay", "2"), ("router_tau_decay", "-1"), ("rollout_batch", "-1")])
def test_a_numeric_flag_out_of_range_is_one_line_naming_it_and_its_range(name, value):
    with pytest.raises(SystemExit) as err:
        lrpo.parse_args([f"{runlog.flag(name)}={value}"] + ([] if name in ("steps", "epochs") else ["--steps", "1"]))
    message = one_line_error(err)
    assert message.startswith(f"error: {runlog.flag(name)} ") and "must be" in message, message
    rule = message.split("must be ")[1]
    assert rule.startswith(("at least", "positive", "above", "in [", "in (")), message


OTHER_CLIS = {   # (module, the arguments before the flag), the numeric flags with a bad value each
    ("evaluate", ()): {"--limit": "0", "--max-new-tokens": "-1", "--batch-size": "-5", "--judge-max-tokens": "0"},
    ("extras.label", ()): {"--batch-size": "0", "--workers": "-1", "--max-tokens": "0", "--temperature": "nan"},
    ("extras.warm_start", ("build",)): {"--n-prompts": "0", "--seed": "-1"},
    ("extras.warm_start", ("sft",)): {"--epochs": "0", "--lr": "inf", "--batch-size": "-2"},
}


@pytest.mark.parametrize("cli_name,flag,value", [(m[0] + " " + " ".join(m[1]), f, v) for m, flags in OTHER_CLIS.items()
                                                 for f, v in flags.items()])
def test_the_other_clis_refuse_out_of_range_numbers_naming_the_flag(cli_name, flag, value, capsys):
    import importlib
    module, *before = cli_name.split()
    with pytest.raises(SystemExit) as err:
        importlib.import_module(module).main(before + [f"{flag}={value}"])
    assert err.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {flag}: {value}: must be " in line, line


def test_an_empty_out_is_refused():
    with pytest.raises(SystemExit, match=r"--out is empty") as err:
        lrpo.parse_args(["--out", "", "--steps", "1"])
    one_line_error(err)
    with pytest.raises(SystemExit, match=r"--out is empty"):
        lrpo.parse_args(["--out", "", "--resume"])


# ---------------------------------------------------------------------------------------------
# 7. data

def write(path, text: bytes):
    path.write_bytes(text)
    return str(path)


ROW = {"lang": "de", "question": "Wie heißt die Hauptstadt?", "answer": "Berlin."}


def rows(*extra):
    return [json.dumps({**ROW, "question": f"Frage {i}?", **e}, ensure_ascii=False).encode() for i, e in
            enumerate([{}] * 4 + list(extra))]


def test_invalid_utf8_is_one_line_naming_file_and_row(tmp_path, monkeypatch):
    no_model(monkeypatch)
    lines = rows()
    lines[2] = lines[2].replace("Frage".encode(), b"Fr\xe4ge")   # Latin-1, not UTF-8
    path = write(tmp_path / "latin.jsonl", b"\n".join(lines) + b"\n")
    with pytest.raises(SystemExit, match=r"latin\.jsonl: row 3: not valid UTF-8 \(byte 0xe4") as err:
        lrpo.main(["--data", path, "--model", "x", "--out", str(tmp_path / "run"), "--steps", "1"])
    one_line_error(err)
    bad_json = write(tmp_path / "latin.json", b"[\n" + b",\n".join(lines) + b"\n]")
    with pytest.raises(Exception, match=r"latin\.json: line 4: not valid UTF-8"):
        list(recipes.read_rows(bad_json))


@pytest.mark.parametrize("number", ["NaN", "nan", "Infinity"])
def test_a_non_finite_answer_number_is_one_line_naming_the_row(tmp_path, number):
    """Issue 34: answer_number NaN was accepted (reward 0 every step)."""
    lines = rows()
    lines[1] = lines[1][:-1] + f', "answer_number": {number if number != "nan" else chr(34) + "nan" + chr(34)}}}'.encode()
    path = write(tmp_path / "nan.jsonl", b"\n".join(lines))
    with pytest.raises(Exception, match=r"nan\.jsonl.*row 2.*'answer_number'.*not a finite number"):
        recipes.load_examples(path)


def test_a_utf8_bom_is_accepted(tmp_path):
    from extras import recipes
    lines = rows()
    for name, text in (("bom.jsonl", b"\n".join(lines)), ("bom.json", b"[" + b",".join(lines) + b"]")):
        examples = recipes.load_examples(write(tmp_path / name, b"\xef\xbb\xbf" + text))
        assert [ex.question for ex in examples] == [f"Frage {i}?" for i in range(4)]


def test_duplicate_rows_are_counted_and_dropped_unless_kept(tmp_path, capsys):
    path = write(tmp_path / "dup.jsonl", b"\n".join(rows() + rows()[:3]))
    cfg = lrpo.parse_args(["--data", path, "--model", "x", "--out", str(tmp_path / "r"), "--steps", "1",
                           "--test-fraction", "0", "--no-keep-duplicates"])   # the real preset keeps them
    train, _ = setup.load_data(cfg)
    assert sorted(ex.question for ex in train) == [f"Frage {i}?" for i in range(4)]
    assert "3 duplicate rows (same language, question and answer) dropped" in capsys.readouterr().out
    cfg.keep_duplicates = True
    assert len(setup.load_data(cfg)[0]) == 7


def test_the_real_preset_keeps_duplicates_and_the_split_is_the_same_for_every_seed(tmp_path):
    """Issue 34, item 8: verl keeps repeated rows (the real preset too; the toy drops them); the
    held-out split is the official one (seed 42) whatever --seed; a run saved before keeps its split."""
    assert lrpo.parse_args(["--model", "org/m", "--steps", "1", "--out", str(tmp_path / "a")]).keep_duplicates
    assert not lrpo.parse_args(["--steps", "1", "--out", str(tmp_path / "b")]).keep_duplicates
    path = write(tmp_path / "many.jsonl", b"\n".join(
        json.dumps({**ROW, "question": f"Frage {i}?", "id": str(i)}).encode() for i in range(40)))
    held_out = lambda *flags: sorted(ex.question for ex in setup.load_data(lrpo.parse_args(
        ["--data", path, "--model", "x", "--steps", "1", "--out", str(tmp_path / "r"), *flags]))[1])
    assert held_out("--seed", "0") == held_out("--seed", "7") == \
        sorted(ex.question for ex in data_split(path, 42)) != sorted(ex.question for ex in data_split(path, 7))
    out = tmp_path / "old"
    out.mkdir()
    runlog.write_config(lrpo.parse_args(["--out", str(out), "--steps", "1", "--seed", "7"]))
    saved = json.loads((out / "config.json").read_text())
    del saved["split_seed"]   # a run saved before the flag: its split followed --seed
    (out / "config.json").write_text(json.dumps(saved))
    assert lrpo.parse_args(["--out", str(out), "--resume"]).split_seed == 7


def data_split(path, seed):
    import data
    return data.split_examples(recipes.load_examples(path), 0.1, seed=seed)[1]


def test_an_evaluation_only_language_in_training_data_is_named_before_the_model_loads(tmp_path, monkeypatch):
    no_model(monkeypatch)
    path = write(tmp_path / "hi.jsonl", b"\n".join(rows({"lang": "hi"}, {"lang": "hi"})))
    with pytest.raises(SystemExit, match=r"hi \(Hindi\) is evaluation-only") as err:
        lrpo.main(["--data", path, "--model", "x", "--out", str(tmp_path / "run"), "--steps", "1",
                   "--test-fraction", "0", "--questions-per-step", "2", "--calibration", "none"])
    one_line_error(err)


# ---------------------------------------------------------------------------------------------
# 10. kill -9 at random points of a short CPU run, resume, compare with the uninterrupted run

def test_kill_9_at_random_points_then_resume_equals_the_uninterrupted_run(tmp_path, toy_model_and_tokenizer):
    flags = SMALL + ["--steps", "4", "--save-every", "1", "--eval-size", "0"]
    command = [sys.executable, str(ROOT / "lrpo.py")]
    subprocess.run(command + flags + ["--out", str(tmp_path / "one_go")], check=True, cwd=ROOT,
                   capture_output=True)
    out, rng, kills = tmp_path / "killed", random.Random(0), 0
    for attempt in range(12):
        resume = ["--resume"] if runlog.newest_checkpoint(out) else []
        if not resume and out.exists():   # killed before the first save: start again
            import shutil
            shutil.rmtree(out)
        proc = subprocess.Popen(command + flags + ["--out", str(out)] + resume, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if attempt < 4:   # the first attempts are killed at a random moment, saves included
            start = time.time()
            while not (out / "metrics.jsonl").exists() and proc.poll() is None and time.time() - start < 120:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.5))
            if proc.poll() is None:
                proc.kill()
                kills += 1
        _, err = proc.communicate()
        if proc.returncode == 0:
            break
    assert kills >= 2 and proc.returncode == 0, err
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time")} for r in rows]
    assert strip(runlog.read(out, "metrics.jsonl")) == strip(runlog.read(tmp_path / "one_go", "metrics.jsonl"))
    assert runlog.read(out, "router.jsonl") == runlog.read(tmp_path / "one_go", "router.jsonl")


# ---------------------------------------------------------------------------------------------
# 8. command lines: no abbreviations, keys never printed, endpoint errors in one line

def test_label_refuses_an_abbreviated_api_key_flag(tmp_path, capsys):
    from extras import label
    with pytest.raises(SystemExit) as err:
        label.main(["--in", "x.jsonl", "--out", str(tmp_path / "o.jsonl"), "--url", "http://localhost:1/v1",
                    "--name", "m", "--api-key", "sk-secret"])
    assert err.value.code == 2
    assert "unrecognized arguments: --api-key sk-secret" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        lrpo.parse_args(["--questions", "4"])   # not --questions-per-step


def refusing_server(code):
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b"unauthorized")
        def log_message(self, *a):
            pass
    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_endpoint_errors_are_one_line_with_no_key(monkeypatch):
    import evaluate
    from extras import label
    server = refusing_server(401)
    url = f"http://user:sk-secret@127.0.0.1:{server.server_port}/v1"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-secret")
    try:
        with pytest.raises(SystemExit) as err:
            evaluate.http_judge(url.replace("user:sk-secret@", ""), "m")(["is it right?"])
        message = one_line_error(err)
        assert "HTTP Error 401" in message and "check the API key" in message and "sk-" not in message
        ask = label.http_labeller(f"http://127.0.0.1:{server.server_port}/v1", "m", api_key="sk-x", attempts=1)
        with pytest.raises(label.LabelError, match=r"HTTP 401: unauthorized \(check the API key"):
            ask(["q"], 0.0)
    finally:
        server.shutdown()
    assert runlog.redact(url) == f"http://***@127.0.0.1:{server.server_port}/v1"
    with pytest.raises(SystemExit) as err:
        label.http_labeller("http://user:sk-secret@127.0.0.1:9/v1", "m", attempts=1)
    assert "sk-secret" not in one_line_error(err)


@pytest.mark.parametrize("url", ["http://user:sk-KEY1@10.0.0.1/v1", "http://sk-KEY1@10.0.0.1:80/v1",
                                 "http://user:sk-KEY1@host:KEY/v1", "ftp://10.0.0.1/?api_key=sk-KEY1"])
def test_a_key_in_a_url_is_never_printed_by_any_cli(url, monkeypatch, capsys):
    """Issue 34: `--url http://user:KEY@host/v1` was an InvalidURL traceback printing the key, in
    label, evaluate and warm_start."""
    import evaluate
    from extras import label, warm_start
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    for make in (lambda: label.http_labeller(url, "m", attempts=1),
                 lambda: evaluate.http_judge(url, "m"),
                 lambda: warm_start.http_teacher(url, "m", "sk-env")):
        with pytest.raises(SystemExit) as err:
            make()
        assert "KEY1" not in one_line_error(err) and "***" in str(err.value)
    assert "KEY1" not in "".join(capsys.readouterr())


def test_key_query_parameters_are_redacted_and_invalid_urls_are_one_line(monkeypatch, capsys):
    from extras import label, warm_start
    assert runlog.redact("https://h/v1?api_key=sk-1&model=x&token=t2&Key=k3") == \
        "https://h/v1?api_key=***&model=x&token=***&Key=***"
    url = "http://10.0.0.1:9/v1?api_key=sk-KEY2"
    warm_start._warn_plain_http(url, "sk-env")
    warned = capsys.readouterr().err
    assert "10.0.0.1" in warned and "KEY2" not in warned
    bad = "http://127.0.0.1:9/v 1?token=sk-KEY3"   # a space: http.client's InvalidURL names the URL
    with pytest.raises(label.LabelError) as err:
        label.http_labeller(bad, "m", attempts=1)(["q"], 0.0)
    assert "InvalidURL" in str(err.value) and "KEY3" not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SystemExit) as err:
        warm_start.http_teacher(bad, "m")([{"role": "user", "content": "q"}])
    assert "KEY3" not in one_line_error(err)
