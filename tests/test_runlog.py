"""extras/runlog.py: checkpoints that survive a crash at any point of a save, logs trimmed to the
checkpoint, the out-folder messages, the before/after table and plots readable at 0 and 1."""
import copy
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import bandit
import lrpo
from extras import runlog


class Crash(Exception):
    """A simulated kill."""


def make_run(model, tok, out):
    cfg = lrpo.Config(out=str(out), save_every=1)
    Path(out).mkdir(parents=True, exist_ok=True)
    runlog.write_config(cfg)   # a run folder of ours
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return SimpleNamespace(cfg=cfg, model=model, tokenizer=tok, optimizer=optimizer,
                           router=bandit.LanguageRouter(["en", "de"], update_every=1))


def train_a_little(run, seed):
    """Change the weights, the optimizer moments and the router tables, as a step does."""
    g = torch.Generator().manual_seed(seed)
    for p in run.model.parameters():
        p.grad = torch.randn(p.shape, generator=g)
    run.optimizer.step()
    run.router.begin_step()
    run.router.observe(["geo"], [("r1",)], ["de"], [float(seed)])
    run.router.observe(["geo"], [("r1",)], ["en"], [0.0])
    run.router.end_step()


def snapshot(run):
    return ({k: v.clone() for k, v in run.model.state_dict().items()},
            copy.deepcopy(run.optimizer.state_dict()), json.dumps(run.router.state_dict()))


def crash_points(monkeypatch):
    """Arm the crash of the next save at one of its points (named, for the tests that pick one)."""
    real_rename, real_rmtree, real_write = Path.rename, shutil.rmtree, Path.write_text

    def rename_then_crash(when):
        def rename(self, target):
            out = real_rename(self, target)
            if Path(target).name == when:
                raise Crash
            return out
        return rename

    def write_text(self, *a, **k):
        if self.name == runlog.MARKER:
            raise Crash
        return real_write(self, *a, **k)

    return {
        "before the marker": lambda: monkeypatch.setattr(Path, "write_text", write_text),
        "after checkpoint -> checkpoint-1": lambda: monkeypatch.setattr(Path, "rename", rename_then_crash("checkpoint-1")),
        "after .tmp -> checkpoint": lambda: monkeypatch.setattr(Path, "rename", rename_then_crash("checkpoint")),
    }


def crash_at_event(monkeypatch, k: int) -> list:
    """Arm a crash at the k-th file-system event (0-based) from now: each rename, unlink, file
    replace, link, marker write, and folder deletion (which first deletes one file, as a kill
    midway would leave it). Returns the list of events seen (to tell when k is past the last)."""
    import os
    seen = []
    def event(name, real, half=None):
        def wrapped(*a, **kw):
            seen.append((name, str(a[0])))
            if len(seen) - 1 == k:
                if half:
                    half(*a)
                raise Crash
            return real(*a, **kw)
        return wrapped
    def half_rmtree(path, *a):
        files = sorted(p for p in Path(path).rglob("*") if p.is_file())
        if files:
            files[0].unlink()
    monkeypatch.setattr(Path, "rename", event("rename", Path.rename))
    monkeypatch.setattr(Path, "unlink", event("unlink", Path.unlink))
    monkeypatch.setattr(Path, "write_text", event("write_text", Path.write_text))
    monkeypatch.setattr(shutil, "rmtree", event("rmtree", shutil.rmtree, half_rmtree))
    monkeypatch.setattr(os, "replace", event("replace", os.replace))
    return seen


def complete_steps(out):
    return [step for _, step in runlog.complete_checkpoints(out)]


def test_kill_at_every_event_of_a_save_and_of_the_resume_loses_nothing(tmp_path, monkeypatch, tiny_qwen):
    """Two checkpoints kept (the default): a save of step 3 killed at each of its file-system
    events, then the resume killed at each of its own (put in place, prune, trim the logs, atomic):
    the resume restores step 3 or step 2 exactly, keeps two complete checkpoints, and no log line
    of a kept step is lost."""
    model, tok = tiny_qwen
    base = make_run(model, tok, tmp_path / "base")
    expected = {}
    for step in (1, 2, 3):
        train_a_little(base, seed=step)
        expected[step] = snapshot(base)
    shutil.rmtree(tmp_path / "base")
    fresh = copy.deepcopy(model)
    events_of_save = events_of_resume = 0
    for k in range(60):
        out = tmp_path / f"save{k}"
        run = make_run(copy.deepcopy(model), tok, out)
        for step in (1, 2, 3):
            run.model.load_state_dict(expected[step][0])
            run.optimizer.load_state_dict(expected[step][1])
            run.router.load_state_dict(json.loads(expected[step][2]))
            for name in runlog.LOGS:
                runlog.append(run.cfg, name, [{"step": step}])
            if step < 3:
                runlog.save_checkpoint(run, step)
                continue
            seen = crash_at_event(monkeypatch, k)
            try:
                runlog.save_checkpoint(run, step)
                crashed = False
            except Crash:
                crashed = True
            monkeypatch.undo()
        for name in runlog.LOGS:   # step 4 was logged, and cut short mid-line, before the kill
            runlog.append(run.cfg, name, [{"step": 4}])
            with (out / name).open("a") as f:
                f.write('{"step": 5, "x')
        if not crashed:
            events_of_save = k
            break
        assert complete_steps(out)[0] in (2, 3), (k, seen[-1])
        # the resume itself killed at each of its events, then resumed again
        for j in range(60):
            again = make_run(copy.deepcopy(fresh), tok, out)
            seen = crash_at_event(monkeypatch, j)
            try:
                step = runlog.load_checkpoint(again)
                resumed = True
            except Crash:
                resumed = False
            monkeypatch.undo()
            if resumed:
                events_of_resume = max(events_of_resume, j)
                break
        assert step in (2, 3) and step == complete_steps(out)[0]
        for key, v in expected[step][0].items():
            torch.testing.assert_close(again.model.state_dict()[key], v, rtol=0, atol=0)
        assert complete_steps(out) == [step, step - 1], (k, j)   # two kept
        assert sorted(p.name for p in out.glob("checkpoint*")) == ["checkpoint", f"checkpoint-{step - 1}"]
        for name in runlog.LOGS:
            assert [r["step"] for r in runlog.read(out, name)] == list(range(1, step + 1)), (k, j, name)
        runlog.save_checkpoint(again, step + 1)   # and saving goes on, two kept
        assert complete_steps(out) == [step + 1, step]
    assert events_of_save >= 8 and events_of_resume >= 3, (events_of_save, events_of_resume)


@pytest.mark.parametrize("point,saved_step", [("before the marker", 1), ("after checkpoint -> checkpoint-1", 2),
                                              ("after .tmp -> checkpoint", 2)])
def test_a_crash_at_any_point_of_a_save_resumes_from_the_newest_complete_checkpoint(
        tmp_path, monkeypatch, tiny_qwen, point, saved_step):
    model, tok = tiny_qwen
    fresh = copy.deepcopy(model)
    run = make_run(model, tok, tmp_path)
    expected = {}
    for step in (1, 2):
        train_a_little(run, seed=step)
        expected[step] = snapshot(run)
        for name in runlog.LOGS:   # the loop logs a step, then saves it
            runlog.append(run.cfg, name, [{"step": step}])
        if step == 2:
            crash_points(monkeypatch)[point]()
            with pytest.raises(Crash):
                runlog.save_checkpoint(run, step)
            monkeypatch.undo()
        else:
            runlog.save_checkpoint(run, step)
    # a plain rerun names the way forward; --resume restores the newest complete checkpoint
    with pytest.raises(SystemExit, match=rf"already holds a run \(checkpoint at step {saved_step}\); .*--resume"):
        runlog.check_out_dir(SimpleNamespace(out=str(tmp_path), resume=False, save_every=1))
    again = make_run(fresh, tok, tmp_path)
    assert runlog.load_checkpoint(again) == saved_step
    weights, optimizer, router = snapshot(again)
    for k, v in expected[saved_step][0].items():
        torch.testing.assert_close(weights[k], v, rtol=0, atol=0)
    assert router == expected[saved_step][2]
    ours, theirs = optimizer["state"], expected[saved_step][1]["state"]
    assert ours.keys() == theirs.keys()
    for k in ours:
        for name in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(ours[k][name], theirs[k][name], rtol=0, atol=0)
    kept = ["checkpoint"] + (["checkpoint-1"] if saved_step == 2 else [])   # put back in place, two kept
    assert sorted(p.name for p in tmp_path.glob("checkpoint*")) == kept
    assert [r["step"] for r in runlog.read(tmp_path, "metrics.jsonl")] == list(range(1, saved_step + 1))
    runlog.save_checkpoint(again, 3)   # and saving goes on
    assert runlog.newest_checkpoint(tmp_path) == (tmp_path / "checkpoint", 3)


def test_trainer_state_is_plain_data(tmp_path, tiny_qwen):
    model, tok = tiny_qwen
    run = make_run(model, tok, tmp_path)
    train_a_little(run, seed=1)
    runlog.save_checkpoint(run, 1)
    state = torch.load(tmp_path / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 1 and state["config"]["out"] == str(tmp_path)
    assert json.loads((tmp_path / "checkpoint" / "complete").read_text()) == {"step": 1}


def test_out_dir_messages_name_the_way_forward(tmp_path):
    cfg = lambda resume: SimpleNamespace(out=str(tmp_path / "run"), resume=resume, save_every=50)
    runlog.check_out_dir(cfg(False))   # a new folder
    runlog.write_config(lrpo.Config(out=str(tmp_path / "run")))
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(SystemExit, match=r"^error: .*run already holds a run that saved no checkpoint; delete it or "
                                         r"pass another --out$"):
        runlog.check_out_dir(cfg(False))
    with pytest.raises(SystemExit, match=r"^error: --resume: no complete checkpoint in .*run \(the run stopped before "
                                         r"its first save; --save-every is 50\); delete .*run and start again"):
        runlog.check_out_dir(cfg(True))
    (tmp_path / "run" / "checkpoint.tmp").mkdir()   # a save that died before its marker
    with pytest.raises(SystemExit, match="no complete checkpoint"):
        runlog.check_out_dir(cfg(True))


def test_trim_logs_drops_later_steps_and_a_line_cut_short(tmp_path):
    logs = ("metrics.jsonl", "samples.jsonl", "eval.jsonl", "router.jsonl")
    for name in logs:
        runlog.append(SimpleNamespace(out=tmp_path), name, [{"step": s, "x": s} for s in (1, 2, 3)])
        with (tmp_path / name).open("a") as f:
            f.write('{"step": 4, "x"')
    runlog.trim_logs(tmp_path, 2)
    for name in logs:
        assert runlog.read(tmp_path, name) == [{"step": 1, "x": 1}, {"step": 2, "x": 2}], name


def test_before_after_table_with_accuracy_for_some_languages():
    before = {"eval/n": 2, "eval/reward": 0.25, "eval/reward/de": 0.5, "eval/reward/en": 0.0,
              "eval/accuracy": 0.0, "eval/accuracy_n": 1, "eval/accuracy/en": 0.0}
    after = {**before, "eval/reward": 0.5, "eval/reward/en": 0.5, "eval/accuracy": 1.0, "eval/accuracy/en": 1.0}
    assert runlog.before_after_table(before, after).splitlines()[:5] == [   # then the legend
        "lang    accuracy before   after    reward before   after",
        "de                    –       –            0.500   0.500",
        "en                0.000   1.000            0.000   0.500",
        "all               0.000   1.000            0.250   0.500",
        "(accuracy over the 1 of 2 held-out questions with a checkable answer)"]


def test_plots_are_readable_at_zero(tmp_path, monkeypatch):
    """A run whose accuracy and reward stay 0: fixed 0..1 axes (not matplotlib's −0.04..0.04), and
    titles inside the figure."""
    import matplotlib.figure
    rows = [{"step": s, "reward": 0.0, "reward/en": 0.0, "reward/de": 0.0, "time/rollout": 1.0,
             "time/reward": 0.5, "time/update": 2.0} for s in range(1, 6)]
    evals = [{"step": s, "eval/accuracy": 0.0, "eval/accuracy/en": 0.0, "eval/accuracy/de": 0.0,
              "eval/reward": 0.0} for s in (0, 5)]
    for name, lines in (("metrics.jsonl", rows), ("eval.jsonl", evals)):
        runlog.append(SimpleNamespace(out=tmp_path), name, lines)
    figures, real_savefig = [], matplotlib.figure.Figure.savefig
    def savefig(fig, *a, **k):
        figures.append(fig)
        return real_savefig(fig, *a, **k)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    assert runlog.plot_run(tmp_path) == [tmp_path / "training.png"]
    assert (tmp_path / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (fig,) = figures
    reward, accuracy, _ = fig.axes[:3]
    assert reward.get_ylim() == pytest.approx((-0.02, 1.02)) and accuracy.get_ylim() == pytest.approx((-0.02, 1.02))
    assert accuracy.get_title() == "held-out accuracy (greedy)"
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    for ax in fig.axes[:3]:
        box = ax.title.get_window_extent(renderer)
        assert 0 <= box.x0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1, ax.get_title()
