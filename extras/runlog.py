"""The run folder: what a training run writes, how it is read back, and how a run is resumed
from it; and the checks of a run's flags and data that come before the model loads (lrpo.py).

    <out>/config.json      the run's configuration (lrpo.Config); --resume reads it back
    <out>/metrics.jsonl    one line per step: rewards (overall, per language), gate, similarities,
                           loss terms, KL, entropy, clip fractions, zero-variance groups, router
                           state, time per phase
    <out>/samples.jsonl    completions of a few questions per step, with their reward components
    <out>/router.jsonl     routing probabilities per (topic, region) context, per step
    <out>/eval.jsonl       held-out evaluations (step 0, every --eval-every steps, the end)
    <out>/training.png     reward per language, evaluation per language, time per phase
    <out>/router.png       router probabilities over training per context (the paper's Fig. 3a)
    <out>/checkpoint/      model (safetensors, loadable by from_pretrained), tokenizer,
                           trainer_state.pt (optimizer, router, step, config: tensors and plain
                           data, read with torch.load(weights_only=True)), and the marker file
                           ``complete``, written last

A checkpoint is written whole under ``checkpoint.tmp/``, marked complete, and renamed into place;
a crash at any point of a save leaves at least one complete checkpoint, and ``--resume`` takes
the newest complete one. Resuming drops log lines newer than the checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import textwrap
import time
from pathlib import Path


class PhaseClock:
    """Wall time per phase; on a GPU it synchronises at each lap, so the time is the GPU's too."""

    def __init__(self, device: str):
        import torch
        self.sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
        self.totals, self.last = {}, None
        self.lap(None)

    def lap(self, name):
        self.sync()
        now = time.perf_counter()
        if name is not None:
            self.totals[f"time/{name}"] = self.totals.get(f"time/{name}", 0.0) + now - self.last
        self.last = now


@contextlib.contextmanager
def first_ctrl_c_stops():
    """The first Ctrl-C sets stop["requested"] (the loop finishes its step and saves a
    checkpoint); a second one aborts at once."""
    stop = {"requested": False}
    def request_stop(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        print("\n[lrpo] Ctrl-C: finishing this step, then saving a checkpoint (again to abort)")
    previous_handler = signal.signal(signal.SIGINT, request_stop)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous_handler)


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
    crash) and any line a crash cut short, so a resumed run's logs read as one run's."""
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
        path.write_text("".join(l + "\n" for l in keep), encoding="utf-8")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def fail(message: str):
    """A one-line error for the user (no traceback): what is wrong and how to fix it."""
    raise SystemExit(f"error: {message}")


# ----------------------------------------------------------------------------------------------
# --resume: the configuration comes from the run folder

def resumed_config(given: dict, out: str, may_change, names) -> dict:
    """The saved run's configuration (``<out>/config.json``, the fields in ``names``) with the
    flags in ``may_change`` taken from the command line. Any other flag given again must agree
    with the saved run: a contradiction is an error naming both values."""
    path = Path(out) / "config.json"
    if not path.exists():
        fail(f"--resume: {out} holds no run to resume (no config.json, no checkpoint); start it without --resume")
    saved = {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items() if k in names}
    for name, value in given.items():
        if name not in may_change and name not in ("resume", "out") and value != saved.get(name):
            fail(f"{flag(name)} {value} contradicts the saved run's {name} {saved.get(name)} ({path}); "
                 f"only {', '.join(map(flag, may_change))} may change on --resume")
    if "epochs" in given and "steps" not in given:
        saved["steps"] = None   # --epochs now sets the length of the run
    return {**saved, **given, "out": out}


# ----------------------------------------------------------------------------------------------
# Checks: every flag or data mismatch is a one-line error naming the fix, before the model loads

AT_LEAST_ONE = ("group_size", "questions_per_step", "max_new_tokens", "micro_batch", "loss_micro_batch",
                "logprob_micro_batch", "mini_batch", "ppo_epochs", "steps",
                "router_update_every", "threads")
NOT_NEGATIVE = ("orig_lang_min", "eval_every", "save_every", "eval_size", "samples_per_step", "lr", "weight_decay", "kl_coef")


def check_flags(cfg) -> None:
    """Flag values that cannot work, whatever the data."""
    for name in AT_LEAST_ONE + NOT_NEGATIVE:
        value, least = getattr(cfg, name), 1 if name in AT_LEAST_ONE else 0
        if value is not None and value < least:
            fail(f"{flag(name)} {value}: must be at least {least}")
    if cfg.orig_lang_min > cfg.group_size:
        fail(f"--orig-lang-min {cfg.orig_lang_min} exceeds --group-size {cfg.group_size}: the rollouts kept "
             f"in the question's language must fit in its group; lower --orig-lang-min or raise --group-size")
    for name, ok, rule in (("epochs", cfg.epochs is None or cfg.epochs > 0, "must be positive"),
                           ("test_fraction", 0 <= cfg.test_fraction < 1, "must be in [0, 1)"),
                           ("temperature", cfg.temperature > 0, "must be positive"),
                           ("grad_clip", cfg.grad_clip > 0, "must be positive"),
                           ("router_alpha", 0 < cfg.router_alpha <= 1, "must be in (0, 1]")):
        if not ok:
            fail(f"{flag(name)} {getattr(cfg, name)}: {rule}")
    if str(cfg.device).startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            fail(f"--device {cfg.device}: torch sees no CUDA GPU here; pass --device cpu")


def check_data(cfg, train: list, test: list) -> None:
    """The flags against the loaded examples."""
    if len(train) < cfg.questions_per_step:
        fail(f"--questions-per-step {cfg.questions_per_step} exceeds the {len(train)} training questions of "
             f"--data {cfg.data}; pass --questions-per-step {max(1, len(train))} or less, or more data")
    if cfg.reward == "verifier":
        bad = next((ex for ex in train + test[:cfg.eval_size] if ex.answer_number is None and not ex.key), None)
        if bad is not None:
            fail(f"--reward verifier needs a numeric answer or a gold key for every question, but example "
                 f"{bad.id!r} ({bad.lang}) of --data {cfg.data} has neither; give the data an 'answer_number' "
                 f"or 'key' column, or use --reward similarity")


def check_out_dir(cfg) -> None:
    """Never write over a run by accident, and resume only what can be resumed."""
    out = Path(cfg.out)
    newest = newest_checkpoint(out)
    if cfg.resume and newest is None:
        fail(f"--resume: no complete checkpoint in {out} (the run stopped before its first save; "
             f"--save-every is {cfg.save_every}); delete {out} and start again, or pass another --out")
    if not cfg.resume and ((out / "config.json").exists() or (out / "metrics.jsonl").exists()):
        if newest is None:
            fail(f"{out} already holds a run that saved no checkpoint; delete it or pass another --out")
        fail(f"{out} already holds a run (checkpoint at step {newest[1]}); continue it with "
             f"`python lrpo.py --out {out} --resume` (add --steps N to run to step N), or pass another --out")
    out.mkdir(parents=True, exist_ok=True)


def write_config(cfg) -> None:
    from dataclasses import asdict
    (Path(cfg.out) / "config.json").write_text(json.dumps(asdict(cfg), indent=2), encoding="utf-8")


def router_local_share(out, local: dict) -> dict:
    """lang -> (first, last) router probability that a routed rollout of a regional question goes
    to the region's local language, mean over the regions of that language ("all": over every
    region), from <out>/router.jsonl; "first" is each context's first logged value."""
    from extras.plots import context_locals
    first, last = {}, {}
    for record in read(out, "router.jsonl"):
        for ctx, probs in record["probs"].items():
            langs = context_locals(ctx, local)
            if len(langs) == 1:
                first.setdefault(ctx, probs[langs[0]])
                last[ctx] = probs[langs[0]]
    by_lang = {}
    for ctx in last:
        for lang in (context_locals(ctx, local)[0], "all"):
            by_lang.setdefault(lang, []).append((first[ctx], last[ctx]))
    return {lang: tuple(sum(v) / len(v) for v in zip(*pairs)) for lang, pairs in by_lang.items()}


def before_after_table(before: dict, after: dict, router: dict | None = None) -> str:
    """Held-out accuracy (where checkable) and reward per language, before and after training,
    with the router's probability of each region's local language (``router_local_share``), and
    a legend that says what each column measures."""
    langs = sorted({k.split("/")[-1] for k in after if k.startswith("eval/reward/")})
    metrics = [m for m in ("accuracy", "reward") if f"eval/{m}" in after]
    router = router or {}
    lines = [f"{'lang':6s}" + "".join(f"{m + ' before':>17s}{'after':>8s}" for m in metrics)
             + (f"{'router p(local) first':>23s}{'last':>7s}" if router else "")]
    for lang in langs + ["all"]:
        key = lambda m: f"eval/{m}" + ("" if lang == "all" else f"/{lang}")
        cell = lambda row, m, w: f"{row[key(m)]:{w}.3f}" if key(m) in row else f"{'–':>{w}s}"
        shares = (f"{router[lang][0]:23.3f}{router[lang][1]:7.3f}" if lang in router else f"{'–':>23s}{'–':>7s}")
        lines.append(f"{lang:6s}" + "".join(cell(before, m, 17) + cell(after, m, 8) for m in metrics)
                     + (shares if router else ""))
    if "eval/accuracy_n" in after and after["eval/accuracy_n"] != after.get("eval/n"):
        lines.append(f"(accuracy over the {after['eval/accuracy_n']} of {after.get('eval/n')} held-out "
                     f"questions with a checkable answer)")
    legend = (f"Rows: the question's language ('all': every language); {after.get('eval/n')} held-out "
              f"questions, each answered greedily in its own language, before training and after step "
              f"{after.get('step')}. accuracy: the gold value appears in the answer; reward: the training "
              f"reward (language gate x calibrated similarity to the reference, or the verifier).")
    if router:
        legend += (" router p(local): the router's probability of sending a routed rollout of a regional "
                   "question to the region's local language, mean over the regions whose local language is "
                   "the row's (uniform: 1/|L|); first = when the region was first seen.")
    return "\n".join(lines + textwrap.wrap(legend, 100))


# ----------------------------------------------------------------------------------------------
# Checkpoints: written whole under a temporary name, marked complete, then renamed into place

CHECKPOINT, TMP, OLD = "checkpoint", "checkpoint.tmp", "checkpoint.old"
MARKER = "complete"   # the last file written into a checkpoint folder: {"step": N}


def save_checkpoint(run, step: int) -> Path:
    """Write ``checkpoint.tmp/`` (model, tokenizer, trainer state, then the ``complete`` marker),
    then rename it into place (see :func:`_put_in_place`)."""
    import torch
    from dataclasses import asdict
    tmp = Path(run.cfg.out) / TMP
    _remove(tmp)
    run.model.save_pretrained(tmp)          # safetensors, loadable by from_pretrained
    run.tokenizer.save_pretrained(tmp)
    torch.save({"step": step, "optimizer": run.optimizer.state_dict(),   # plain data: weights_only loads it
                "router": run.router.state_dict(), "config": asdict(run.cfg)}, tmp / "trainer_state.pt")
    (tmp / MARKER).write_text(json.dumps({"step": step}))
    return _put_in_place(tmp)


def _remove(folder: Path) -> None:
    """Delete a checkpoint folder, its marker first: a crash midway leaves no folder that looks whole."""
    (folder / MARKER).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def _put_in_place(folder: Path) -> Path:
    """Make the complete checkpoint ``folder`` the run's ``checkpoint/``: the one it replaces
    becomes ``checkpoint.old/`` and is then deleted. A crash between any two of these steps
    leaves complete folders (with a marker) and incomplete ones (without), never a half-renamed
    whole, and :func:`newest_checkpoint` picks the newest complete one."""
    final, old = folder.parent / CHECKPOINT, folder.parent / OLD
    if folder == final:
        return final
    if folder == old:
        _remove(final)   # chosen over checkpoint/: that one is incomplete
    else:
        _remove(old)
        if final.exists():
            final.rename(old)
    folder.rename(final)
    _remove(old)
    return final


def newest_checkpoint(out) -> tuple[Path, int] | None:
    """(folder, step) of the newest complete checkpoint among checkpoint/, .tmp/ and .old/."""
    found = []
    for rank, name in enumerate((CHECKPOINT, TMP, OLD)):
        marker = Path(out) / name / MARKER
        if marker.exists():
            found.append((json.loads(marker.read_text())["step"], -rank, marker.parent))
    if not found:
        return None
    step, _, folder = max(found)
    return folder, step


def load_checkpoint(run) -> int:
    """Restore the model, optimizer and router from the newest complete checkpoint, trim the
    logs to its step and return that step."""
    import torch
    from transformers import AutoModelForCausalLM
    out = Path(run.cfg.out)
    found = newest_checkpoint(out)
    if found is None:
        fail(f"--resume: no complete checkpoint in {out}")
    path = _put_in_place(found[0])   # after a crash mid-save, the newest complete one goes back in place
    for name in (TMP, OLD):          # and what is left of the others goes
        _remove(out / name)
    saved = torch.load(path / "trainer_state.pt", weights_only=True)   # tensors and plain data: runs no code
    model = AutoModelForCausalLM.from_pretrained(path, dtype=next(run.model.parameters()).dtype)
    run.model.load_state_dict(model.state_dict())
    run.optimizer.load_state_dict(saved["optimizer"])
    try:
        run.router.load_state_dict(saved["router"])
    except ValueError as e:
        fail(f"{path}: {e}; the data or --langs of this run changed since it was saved")
    trim_logs(out, saved["step"])
    return saved["step"]


# ----------------------------------------------------------------------------------------------
# Plots

def unit_ylim(ax, values) -> None:
    """A 0..1 quantity's y-axis fixed at −0.02..1.02 (wider only if values leave it), so that a
    curve at 0 or at 1 is drawn against a readable axis rather than a degenerate one."""
    finite = [v for v in values if v is not None and math.isfinite(v)] or [0.0]
    ax.set_ylim(min(-0.02, min(finite) - 0.02), max(1.02, max(finite) + 0.02))


def plot_run(run_dir) -> list[Path]:
    """reward per language, evaluation accuracy, time per phase and the router heatmap."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    run = Path(run_dir)
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if l.strip()]
    written = []
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    steps = [r["step"] for r in rows]
    langs = sorted({k.split("/")[1] for r in rows for k in r if k.startswith("reward/")})
    plotted = [r["reward"] for r in rows]
    for lang in langs:
        values = [r.get(f"reward/{lang}", math.nan) for r in rows]
        axes[0].plot(steps, values, label=lang, lw=1)
        plotted += values
    axes[0].plot(steps, [r["reward"] for r in rows], "k", lw=2, label="all")
    axes[0].set(title="training reward by rollout language", xlabel="step")
    unit_ylim(axes[0], plotted)
    axes[0].legend(fontsize=7, ncol=2)
    evals = read(run, "eval.jsonl")
    metric = "eval/accuracy" if evals and "eval/accuracy" in evals[0] else "eval/reward"
    plotted = []
    for lang in sorted({k.split("/")[-1] for e in evals for k in e if k.startswith(metric + "/") and k.count("/") == 2}):
        points = [(e["step"], e[f"{metric}/{lang}"]) for e in evals if f"{metric}/{lang}" in e]
        axes[1].plot(*zip(*points), "o-", label=lang)
        plotted += [v for _, v in points]
    axes[1].set(title=f"held-out {metric.split('/')[1]} (greedy)", xlabel="step")
    unit_ylim(axes[1], plotted)
    if plotted:
        axes[1].legend(fontsize=7, ncol=2)
    phases = ["time/rollout", "time/reward", "time/update"]
    bottom = [0.0] * len(rows)
    for ph in phases:
        vals = [r.get(ph, 0.0) for r in rows]
        axes[2].bar(steps, vals, bottom=bottom, label=ph.split("/")[1], width=1.0)
        bottom = [b + v for b, v in zip(bottom, vals)]
    axes[2].set(title="time per phase (s)", xlabel="step")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run / "training.png", dpi=110)
    plt.close(fig)
    written.append(run / "training.png")
    if (run / "router.jsonl").exists() and (run / "router.jsonl").stat().st_size:
        from extras.plots import local_languages, plot_router_heatmap
        config = json.loads((run / "config.json").read_text(encoding="utf-8")) if (run / "config.json").exists() else {}
        written.append(plot_router_heatmap(run / "router.jsonl", run / "router.png",
                                           local=local_languages(config.get("data"))))
    return written
