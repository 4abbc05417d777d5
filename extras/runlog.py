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
    <out>/checkpoint/      the newest complete checkpoint; checkpoint-<step>/ the older ones kept
                           (--keep-checkpoints); see extras/checkpoints.py
    <out>/data.json        a fingerprint of --data and --test-data, checked on --resume
    <out>/lock             the process writing the run (extras/run_lock.py)

Every write that replaces a file is atomic (extras/run_io.py); a crash at any point of a save
leaves at least one complete checkpoint, and ``--resume`` takes the newest complete one that
loads. Resuming drops log lines newer than the checkpoint.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import signal
import textwrap
import time
from pathlib import Path

# the run folder's files, checkpoints and lock live in their own modules; their names stay here
from extras.checkpoints import (CHECKPOINT, FAILED, MARKER, OLD, TMP, complete_checkpoints,  # noqa: F401
                                load_checkpoint, marked_step, newest_checkpoint, save_checkpoint)
from extras.run_io import LOGS, append, atomic_write_text, fail, read, trim_logs  # noqa: F401
from extras.endpoints import check_url, http_hint, redact, scrub  # noqa: F401
from extras.run_lock import LOCK, check_lock, is_lock_file, release_lock, take_lock  # noqa: F401


class PhaseClock:
    """Wall time per phase; on a GPU it synchronises at each lap, so the time is the GPU's too."""

    def __init__(self, device: str, new_step: bool = False):
        import torch
        self.sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
        if new_step and str(device).startswith("cuda"):   # the step's peak memory, in step_metrics
            torch.cuda.reset_peak_memory_stats()
        self.totals, self.last = {}, None
        self.lap(None)

    def lap(self, name):
        self.sync()
        now = time.perf_counter()
        if name is not None:
            self.totals[f"time/{name}"] = self.totals.get(f"time/{name}", 0.0) + now - self.last
        self.last = now


# Ctrl-C, SIGTERM (how SLURM and Kubernetes stop a job), SIGHUP (an ssh session closing)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())


@contextlib.contextmanager
def first_ctrl_c_stops():
    """The first Ctrl-C, SIGTERM or SIGHUP (STOP_SIGNALS) sets stop["requested"]
    to the signal's number (the loop finishes its step, saves a checkpoint and exits non-zero);
    a second one exits at once, keeping the last checkpoint."""
    stop = {"requested": 0}
    def request_stop(signum, frame):
        name = signal.Signals(signum).name
        if stop["requested"]:
            print(f"\n[lrpo] second {name}: stopping now, without saving", flush=True)
            raise SystemExit(128 + signum)
        stop["requested"] = signum
        print(f"\n[lrpo] {name}: finishing this step, then saving a checkpoint (again to abort)",
              flush=True)
    previous = {s: signal.signal(s, request_stop) for s in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# ----------------------------------------------------------------------------------------------
# --resume: the configuration comes from the run folder

def resumed_config(given: dict, out: str, may_change, fields, choices=None) -> dict:
    """The saved run's configuration (``<out>/config.json``, checked against the dataclass
    ``fields`` of lrpo.Config) with the
    flags in ``may_change`` taken from the command line. Any other flag given again must agree
    with the saved run: a contradiction is an error naming both values. PER_INVOCATION flags
    (``--plot``, ``--allow-data-change``) come from the command line only, never from the file."""
    path = Path(out) / "config.json"
    if not path.exists():
        fail(f"--resume: {out} holds no run to resume (no config.json, no checkpoint); start it without --resume")
    saved = saved_config(path)
    for name in PER_INVOCATION:
        saved.pop(name, None)
    check_saved_config(saved, fields, path, choices or {})
    if "split_seed" not in saved:   # saved before --split-seed: its split followed --seed
        saved["split_seed"] = saved.get("seed", 0)
    for name, value in given.items():
        if name not in may_change and name not in ("resume", "out") + PER_INVOCATION \
                and value != saved.get(name):
            fail(f"{flag(name)} {value} contradicts the saved run's {name} {saved.get(name)} ({path}); "
                 f"only {', '.join(map(flag, may_change))} may change on --resume")
    if "epochs" in given and "steps" not in given:
        saved["steps"] = None   # --epochs now sets the length of the run
    return {**ADDED_LATER, **saved, **given, "out": out}


# fields added after runs were saved without them: such a run resumes with these values
ADDED_LATER = {"keep_checkpoints": 2, "split_seed": 42,   # split_seed: see resumed_config
               "labeller": "none", "labeller_name": None}   # labeller: saved before labelling
# a run saved before lid_rules existed: extras/cli.as_saved_before_lid_rules fills these
BEFORE_LID_RULES = ("lid_rules", "untopiced", "test_data", "encoder_dtype")


def saved_config(path: Path) -> dict:
    """``<out>/config.json`` as written by :func:`write_config`, or a one-line error."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as e:
        fail(f"{path}: not a readable config.json ({e}); restore it from the checkpoint's "
             f"trainer_state.pt or start a new run")
    if not isinstance(saved, dict):
        fail(f"{path}: expected an object of the run's flags, got {type(saved).__name__}")
    return saved


NULLABLE = ("steps", "epochs", "eval_size", "threads")   # None in a preset: the real run's


def check_saved_config(saved: dict, fields, path, choices: dict) -> None:
    """Each saved value against its ``Config`` field (``fields``: the dataclass fields): a known
    name, the field's type (None where the default is None), one of its ``choices``."""
    by_name = {f.name: f for f in fields}
    unknown = sorted(set(saved) - set(by_name))
    if unknown:
        fail(f"{path}: unknown key {unknown[0]!r} (a hand edit?); the keys are lrpo.Config's fields")
    missing = [name for name in by_name if name not in saved and name not in ("out",) + PER_INVOCATION
               and name not in ADDED_LATER and not ("lid_rules" not in saved and name in BEFORE_LID_RULES)]
    if missing:
        fail(f"{path}: the key {missing[0]!r} is missing (a hand edit?); put it back (the checkpoint's "
             f"trainer_state.pt holds the run's whole config) or start a new run")
    for name, value in saved.items():
        f = by_name[name]
        kind = f.type if isinstance(f.type, type) else type(f.default)
        ok = (value is None and (f.default is None or name in NULLABLE)) or (
            isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))) or (
            kind is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            fail(f"{path}: {name} = {json.dumps(value)} is not a{'n' if kind is int else ''} "
                 f"{kind.__name__}; fix it or start a new run")
        allowed = choices.get(name)
        if allowed and value is not None and value not in allowed:
            fail(f"{path}: {name} = {json.dumps(value)} is not one of {', '.join(map(str, allowed))}")


# ----------------------------------------------------------------------------------------------
# Checks: every flag or data mismatch is a one-line error naming the fix, before the model loads

INF = math.inf
# every numeric flag of lrpo.py: (lowest, highest, lowest excluded, highest excluded); a float
# must also be finite. None values (a preset's "unset") are not checked here.
RANGES = {
    "test_fraction": (0, 1, False, True), "max_prompt_tokens": (0, INF, False, True),
    "group_size": (1, INF, False, True), "orig_lang_min": (0, INF, False, True),
    "router_alpha": (0, 1, True, False), "router_update_every": (1, INF, False, True),
    "router_tau_decay": (0, 1, True, False), "router_eps_decay": (0, 1, True, False),
    "questions_per_step": (1, INF, False, True), "max_new_tokens": (1, INF, False, True),
    "temperature": (0, INF, True, True), "steps": (1, INF, False, True), "epochs": (0, INF, True, True),
    "lr": (0, INF, False, True), "weight_decay": (0, INF, False, True), "grad_clip": (0, INF, True, True),
    "kl_coef": (0, INF, False, True), "loss_micro_batch": (1, INF, False, True),
    "ppo_epochs": (1, INF, False, True), "mini_batch": (1, INF, False, True),
    "seed": (0, 2**32 - 1, False, False), "split_seed": (0, 2**32 - 1, False, False),
    "max_skipped": (1, INF, False, True),
    "eval_every": (0, INF, False, True), "eval_size": (0, INF, False, True),
    "save_every": (0, INF, False, True), "keep_checkpoints": (1, INF, False, True),
    "samples_per_step": (0, INF, False, True), "threads": (1, INF, False, True),
    "micro_batch": (1, INF, False, True), "logprob_micro_batch": (1, INF, False, True),
    "rollout_batch": (1, INF, False, True),
}
NOT_EMPTY = ("model", "data", "out")   # paths and names: "" is no value


def allowed(name: str, value) -> str:
    """The allowed range of a numeric flag, as the error shows it: 'in (0, 1]', 'at least 1'."""
    low, high, low_open, high_open = RANGES[name]
    if high == INF:
        rule = ("positive" if low == 0 else f"above {low}") if low_open else f"at least {low}"
    else:
        rule = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return rule + (" (a finite number)" if isinstance(value, float) and not math.isfinite(value) else "")


def ranged(kind, low, high=INF, low_open=False):
    """An argparse ``type`` for the other command lines (evaluate.py, extras/label.py,
    extras/warm_start.py): ``kind`` in [low, high] (or (low, high] with ``low_open``), finite;
    anything else is argparse's one-line error naming the flag and the range."""
    import argparse
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}")
        ok = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
        if not ok:
            rule = (("positive" if low == 0 else f"above {low}") if low_open else f"at least {low}") \
                if high == INF else f"in {'(' if low_open else '['}{low}, {high}]"
            raise argparse.ArgumentTypeError(f"{text}: must be {rule}"
                                             + ("" if math.isfinite(value) else " (a finite number)"))
        return value
    parse.__name__ = kind.__name__
    return parse


def check_flags(cfg) -> None:
    """Flag values that cannot work, whatever the data: every numeric flag in its range
    (RANGES; NaN and infinities refused), no empty path."""
    for name in NOT_EMPTY:
        value = getattr(cfg, name, None)
        if isinstance(value, str) and not value.strip():
            fail(f"{flag(name)} is empty; give a {'folder' if name == 'out' else 'value'}")
    for name, (low, high, low_open, high_open) in RANGES.items():
        value = getattr(cfg, name, None)
        if value is None:
            continue
        ok = not (isinstance(value, float) and not math.isfinite(value)) and (
            (value > low if low_open else value >= low) and (value < high if high_open else value <= high))
        if not ok:
            fail(f"{flag(name)} {value}: must be {allowed(name, value)}")
    if cfg.orig_lang_min > cfg.group_size:
        fail(f"--orig-lang-min {cfg.orig_lang_min} exceeds --group-size {cfg.group_size}: the rollouts kept "
             f"in the question's language must fit in its group; lower --orig-lang-min or raise --group-size")
    if str(cfg.labeller).startswith(("http://", "https://")) and not cfg.labeller_name:
        fail(f"--labeller {redact(cfg.labeller)} is an endpoint: name the model to ask there with "
             "--labeller-name (the paper's: openai/gpt-oss-120b)")
    if str(cfg.device).startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            fail(f"--device {cfg.device}: torch sees no CUDA GPU here; pass --device cpu")


def check_data(cfg, train: list, test: list) -> None:
    """The flags against the loaded examples."""
    if len(train) < cfg.questions_per_step:
        fail(f"--questions-per-step {cfg.questions_per_step} exceeds the {len(train)} training questions of "
             f"--data {cfg.data}; pass --questions-per-step {max(1, len(train))} or less, or more data")
    from data import EVAL_ONLY_LANGUAGES
    named = cfg.langs.split(",") if cfg.langs else []
    ungated = sorted({ex.lang for ex in train} & set(EVAL_ONLY_LANGUAGES)
                     | {l.strip() for l in named} & set(EVAL_ONLY_LANGUAGES))
    if ungated:
        fail(f"--data {cfg.data} / --langs: {', '.join(f'{l} ({EVAL_ONLY_LANGUAGES[l]})' for l in ungated)} "
             f"is evaluation-only: the reward cannot gate or score rollouts in it, so every one routed "
             f"there earns 0; drop those training rows (evaluate them with evaluate.py)")
    if cfg.reward == "verifier":
        bad = next((ex for ex in train + test[:cfg.eval_size] if ex.answer_number is None and not ex.key), None)
        if bad is not None:
            fail(f"--reward verifier needs a numeric answer or a gold key for every question, but example "
                 f"{bad.id!r} ({bad.lang}) of --data {cfg.data} has neither; give the data an 'answer_number' "
                 f"or 'key' column, or use --reward similarity")


def drop_duplicates(examples: list, cfg) -> list:
    """Rows repeated in --data (same language, question and answers) are counted, and dropped
    unless --keep-duplicates: each would be a second group of the same question."""
    seen, unique = set(), []
    for ex in examples:
        key = (ex.lang, ex.question, ex.answer, ex.answer_number, ex.key)
        if key not in seen:
            seen.add(key)
            unique.append(ex)
    n = len(examples) - len(unique)
    if n:
        print(f"[data] {cfg.data}: {n} duplicate rows (same language, question and answer) "
              + ("kept (--keep-duplicates)" if cfg.keep_duplicates else
                 "dropped (--keep-duplicates keeps them)"))
    return examples if cfg.keep_duplicates else unique


def is_our_run(out: Path) -> bool:
    """Whether ``out`` holds a config.json that :func:`write_config` wrote."""
    try:
        saved = json.loads((Path(out) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and {"method", "group_size", "orig_lang_min"} <= saved.keys()


def check_out_dir(cfg) -> None:
    """Never write over a run by accident, never into a folder that is not a run's, resume only
    what can be resumed; then hold the folder's lock (see :func:`take_lock`)."""
    out = Path(cfg.out)
    if out.is_symlink() and not out.exists():
        fail(f"--out {out} is a symbolic link to {os.readlink(out)}, which does not exist; "
             f"create its target or pass another --out")
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file; pass a folder")
    check_lock(out)
    if out.exists() and not is_our_run(out) and [p for p in out.iterdir() if not is_lock_file(p.name)]:
        fail(f"--out {out} exists and is not a run folder of lrpo.py (no config.json of a run); "
             f"nothing was touched: pass a new or empty folder")
    newest = newest_checkpoint(out)
    if cfg.resume and newest is None:
        fail(f"--resume: no complete checkpoint in {out} (the run stopped before its first save; "
             f"--save-every is {cfg.save_every}); delete {out} and start again, or pass another --out")
    if not cfg.resume and is_our_run(out):
        if newest is None:
            fail(f"{out} already holds a run that saved no checkpoint; delete it or pass another --out")
        fail(f"{out} already holds a run (checkpoint at step {newest[1]}); continue it with "
             f"`python lrpo.py --out {out} --resume` (add --steps N to run to step N), or pass another --out")
    check_data_unchanged(cfg)   # --resume: the data it was started on
    try:
        out.mkdir(parents=True, exist_ok=True)
        take_lock(out)
    except OSError as e:   # read-only, under a file, a full disk
        fail(f"--out {out}: cannot write there ({e.strerror or type(e).__name__}"
             f"{': ' + str(e.filename) if e.filename else ''}); pass a folder you may write")


def default_out(base: str, resume: bool) -> str:
    """``base``, or for a second run of the same command ``base-2``, ``base-3``, ...; with
    --resume the newest of them (named on the console)."""
    numbered = {1: Path(base)} if Path(base).exists() else {}
    for p in Path(base).parent.glob(Path(base).name + "-*"):
        suffix = p.name[len(Path(base).name) + 1:]
        if suffix.isdigit() and int(suffix) >= 2:
            numbered[int(suffix)] = p
    if resume:
        if numbered:
            newest = numbered[max(numbered)]
            if len(numbered) > 1:
                print(f"[lrpo] --resume: continuing {newest}, the newest of {len(numbered)} runs "
                      f"named {base}[-N] (pass --out to pick another)")
            return str(newest)
        return base
    if not numbered or (list(numbered) == [1] and numbered[1].is_dir()
                        and not any(numbered[1].iterdir())):
        return base
    out = f"{base}-{max(numbered) + 1}"
    print(f"[lrpo] {base} holds an earlier run: this one writes {out} "
          f"(continue it later with `python lrpo.py --out {out} --resume`)")
    return out


PER_INVOCATION = ("resume", "plot", "allow_data_change")   # never read back from config.json


def write_config(cfg) -> None:
    """``<out>/config.json`` and the data's fingerprint (``<out>/data.json``), each replaced whole
    (a kill mid-write leaves the old one)."""
    from dataclasses import asdict
    saved = {k: v for k, v in asdict(cfg).items() if k not in ("plot", "allow_data_change")}
    atomic_write_text(Path(cfg.out) / "config.json", json.dumps(saved, indent=2))
    write_data_fingerprint(cfg)


def nothing_to_do(cfg, first: int, total: int, n_train: int) -> bool:
    """True (with a note) when a resumed run is already at its last step; a run of 0 steps
    (``--epochs`` too small for the data) is a one-line error."""
    if total < 1:
        fail(f"--epochs {cfg.epochs:g} of {n_train} training questions at --questions-per-step "
             f"{cfg.questions_per_step} is 0 steps; raise --epochs or give --steps")
    if first >= total:
        print(f"[lrpo] {cfg.out} is at step {first} of {total}: nothing to do "
              f"(--steps N > {first} runs on)")
    return first >= total


# ----------------------------------------------------------------------------------------------
# The data's fingerprint: a resumed run trains on the data it was started on

DATA = "data.json"   # {flag: fingerprint} of --data and the held-out file, written with config.json
WHOLE_HASH_UP_TO = 256 * 2**20   # larger files: size, mtime and a hash of the first MiB


def fingerprint(path: Path) -> dict:
    import hashlib
    st = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if st.st_size <= WHOLE_HASH_UP_TO:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
            return {"path": str(path), "size": st.st_size, "sha256": digest.hexdigest()}
        digest.update(f.read(1 << 20))
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "sha256_first_mib": digest.hexdigest()}


def data_files(cfg) -> dict:
    """{flag: path} of the data files the run reads (recipes, hub ids and toy have none)."""
    from extras.recipes import test_source
    files = {}
    for name, value in (("--data", cfg.data), ("--test-data", test_source(cfg))):
        if value and value not in ("split", "none") and Path(value).is_file():
            files[name] = Path(value)
    return files


def write_data_fingerprint(cfg) -> None:
    atomic_write_text(Path(cfg.out) / DATA, json.dumps(
        {name: fingerprint(path) for name, path in data_files(cfg).items()}, indent=2))


def check_data_unchanged(cfg) -> None:
    """On --resume: a data file whose size or content changed since the run was saved is named,
    unless --allow-data-change (a run saved before fingerprints were kept gets one now)."""
    path = Path(cfg.out) / DATA
    if not cfg.resume or not path.exists():
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        fail(f"{path}: not readable ({e}); restore it, or pass --allow-data-change to go on")
    now = {name: fingerprint(p) for name, p in data_files(cfg).items()}
    for name in sorted(set(saved) | set(now)):
        before, after = saved.get(name), now.get(name)
        if before == after:
            continue
        why = (f"size {before['size']} -> {after['size']} bytes" if before and after and before["size"] != after["size"]
               else "its content differs" if before and after else "it is gone" if before else "it is new")
        if cfg.allow_data_change:
            print(f"[lrpo] warning: {name} {(after or before)['path']} changed since the run was saved "
                  f"({why}); going on (--allow-data-change)")
            continue
        fail(f"--resume: {name} {(after or before)['path']} changed since the run was saved ({why}); "
             f"restore it, or pass --allow-data-change to go on with the new data")


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


# ----------------------------------------------------------------------------------------------
# The training loop's bookkeeping (lrpo.train_step, lrpo.train, lrpo.main)

def step_metrics(langs: list, rewards, roll, device: str) -> dict:
    """Response lengths and token counts, the step's peak GPU memory, and per language the mean
    reward, the mean response length and the share of rollouts routed there."""
    import numpy as np
    import torch
    lengths = roll.lengths.float().tolist()
    out = {"response_length": float(np.mean(lengths)), "tokens": int(roll.attention_mask.sum())}
    if str(device).startswith("cuda"):
        out["memory/peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        # times since the start the allocator freed its cache to retry (each synchronises): fragmentation
        out["memory/alloc_retries"] = torch.cuda.memory_stats().get("num_alloc_retries", 0)
    for lang in sorted(set(langs)):
        mine = [i for i, l in enumerate(langs) if l == lang]
        out[f"reward/{lang}"] = float(np.mean([rewards[i] for i in mine]))
        out[f"response_length/{lang}"] = float(np.mean([lengths[i] for i in mine]))
        out[f"routed/{lang}"] = len(mine) / len(langs)
    return out


def samples(step: int, examples, langs, roll, result, advantages, logged) -> list[dict]:
    """The completions of the logged questions, with their rewards and advantages."""
    return [{"step": step + 1, "id": ex.id, "question_lang": ex.lang, "target_lang": lang,
             "question": ex.question, "reference": ex.answer, "completion": roll.texts[i],
             "reward": float(result.reward[i]), "advantage": float(advantages[i]),
             **result.details(i)}
            for i, (ex, lang) in enumerate(zip(examples, langs)) if logged[i]]


def progress(cfg, first: int, total: int):
    """The steps, with a bar (in a log file, a line every 30 s instead of a redraw each step)."""
    import sys
    from tqdm import tqdm
    return tqdm(range(first, total), initial=first, total=total, disable=not cfg.progress,
                desc=cfg.method, mininterval=0.1 if sys.stderr.isatty() else 30)


def save_if_sound(run, step: int, completion_logprobs) -> None:
    """A checkpoint of step ``step``, unless the model diverged: the last good one then stays.
    A save that fails (a full disk) is one line; what it wrote is deleted, the last one stays."""
    logprobs = lambda model, ids, mask, start: completion_logprobs(run, model, ids, mask, start)
    if run.guard is None or run.guard.sound(run.model, logprobs):
        try:
            save_checkpoint(run, step)
        except OSError as e:
            shutil.rmtree(Path(run.cfg.out) / TMP, ignore_errors=True)
            last = newest_checkpoint(run.cfg.out)
            fail(f"could not save the checkpoint of step {step} in {run.cfg.out} "
                 f"({e.strerror or type(e).__name__}); "
                 + (f"the checkpoint of step {last[1]} is kept: free space and resume with "
                    f"`python lrpo.py --out {run.cfg.out} --resume`" if last else "no checkpoint was saved"))
        return
    last = newest_checkpoint(run.cfg.out)
    kept = f"the checkpoint of step {last[1]} stays" if last else "no checkpoint is kept"
    print(f"[lrpo] warning: not saving step {step}: the model's last update or log-probs are "
          f"non-finite; {kept}")


def check_finished(cfg, total: int) -> None:
    """Exit non-zero unless the run ends with the checkpoint of its last step (its last update
    may have been skipped on non-finite values, so that step was not saved)."""
    last = newest_checkpoint(cfg.out)
    if last is None or last[1] != total:
        way = (f"the newest checkpoint is of step {last[1]}: resume with `python lrpo.py --out {cfg.out} "
               f"--resume` to redo the steps after it, or lower --lr in a new run") if last else \
            f"no checkpoint was saved: lower --lr and start a new run (another --out, or delete {cfg.out})"
        fail(f"the run reached step {total} but did not save it (its update was skipped or its model "
             f"is non-finite: see the warnings above); {way}")


def stopped(cfg, done: int, stop: dict):
    """After Ctrl-C or SIGTERM: the step is saved; exit non-zero with the resume command."""
    print(f"[lrpo] stopped at step {done}; continue with `python lrpo.py --out {cfg.out} --resume`")
    raise SystemExit(128 + stop["requested"])


def announce(run, total: int, first: int = 0) -> None:
    """What the run will do: data, steps (and how they were counted), devices, L; a resumed run
    first says from which step it continues."""
    cfg = run.cfg
    if first:
        print(f"[lrpo] resuming {cfg.out} from step {first} of {total} (its checkpoint of step {first})")
    from data import held_out_questions
    held_out = len(held_out_questions(run.test, cfg.eval_size))
    print(f"[lrpo] {cfg.method} on {cfg.data}: {len(run.train)} train questions, "
          f"{f'{held_out} held out' if held_out else 'no evaluation'}, {total} steps of "
          f"{cfg.questions_per_step}×{cfg.group_size} rollouts, {cfg.device} {cfg.dtype}, "
          f"out {cfg.out}\n[lrpo] routed languages L ({len(run.router.languages)}): "
          f"{','.join(run.router.languages)}")
    rule = (f"--steps {cfg.steps}" if cfg.steps else f"{cfg.epochs:g} epochs × "
            f"⌊{len(run.train)} / {cfg.questions_per_step}⌋ (official drop_last)")
    print(f"[lrpo] steps: {rule} = {total}")


def finish(run, metrics: dict, after: dict | None, total: int | None = None) -> dict:
    """The last evaluation logged, the before/after table with the router's p(local), plots; then
    a non-zero exit if the run has no checkpoint of its last step ``total`` (check_finished)."""
    from dataclasses import asdict
    cfg, before = run.cfg, None
    if after is not None:
        append(cfg, "eval.jsonl", [after])
        before = read(cfg.out, "eval.jsonl")[0]
        from extras.plots import local_languages
        router = router_local_share(cfg.out, local_languages(cfg.data))
        print(before_after_table(before, after, router))
    for path in plot_run(cfg.out):
        print(f"[lrpo] wrote {path}")
    if total is not None:
        check_finished(cfg, total)
    return {"before": before, "after": after, "last": metrics, "config": asdict(cfg)}


def plot_only(run_dir) -> dict:
    """--plot: redraw the plots of a run folder from its logs; nothing else is run or written."""
    if not (Path(run_dir) / "metrics.jsonl").is_file():
        fail(f"--plot {run_dir}: no metrics.jsonl there (not a run folder of lrpo.py, or a run "
             f"that has not finished a step)")
    print(f"[lrpo] --plot: redrawing the plots of {run_dir} from its logs (no training)")
    for path in plot_run(run_dir):
        print(f"[lrpo] wrote {path}")
    return {}


def first_missing(path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (None: it exists)."""
    path, top = Path(path).absolute(), None
    while not path.exists():
        path, top = path.parent, path
    return top


def remove_if_empty(path, top: Path | None) -> None:
    """Remove ``path`` and its parents up to ``top`` (from :func:`first_missing`) while empty."""
    path = Path(path).absolute()
    while top is not None and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        if path == top:
            return
        path = path.parent


DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}   # the disk's problem, not the code's


@contextlib.contextmanager
def locked_run(cfg):
    """The model is checked first (a typo in --model is named before data loads); the run
    folder's lock (taken by check_out_dir) is released at the end; a diverged run stops with
    one line that says which checkpoint is kept."""
    from data import DataError
    from extras.divergence import Diverged
    from extras.models import ModelLoadError, check_model, go_offline_if_unreachable, quiet_progress_bars
    if cfg.threads:
        import torch
        torch.set_num_threads(cfg.threads)
    quiet_progress_bars()
    created = first_missing(cfg.out)   # the folder this command may create (runs/, or the run's)
    try:
        try:
            check_model(cfg.model, online=go_offline_if_unreachable())
        except RuntimeError as e:
            fail(str(e))
        yield
    except Diverged as e:
        last = newest_checkpoint(cfg.out)
        kept = f"the checkpoint of step {last[1]} is kept" if last else "no checkpoint was saved"
        fail(f"{e}; {kept}; lower --lr (a new run), or raise --max-skipped")
    except (DataError, ModelLoadError) as e:   # bad input, named in one line
        fail(str(e))
    except OSError as e:
        if e.errno not in DISK_ERRNOS:
            raise
        last = newest_checkpoint(cfg.out) if Path(cfg.out).is_dir() else None
        kept = f"the checkpoint of step {last[1]} is kept" if last else "no checkpoint was saved"
        fail(f"cannot write {e.filename or cfg.out} ({e.strerror}); {kept}: free space (or fix the "
             f"permissions) and resume with `python lrpo.py --out {cfg.out} --resume`")
    except KeyboardInterrupt:   # Ctrl-C while loading, before the step loop's handler is set
        last = newest_checkpoint(cfg.out) if Path(cfg.out).is_dir() else None
        kept = (f"the checkpoint of step {last[1]} is kept (continue with `python lrpo.py --out {cfg.out} "
                f"--resume`)" if last else "no checkpoint was saved")
        fail(f"interrupted (Ctrl-C) outside a training step; {kept}")
    finally:
        release_lock(cfg.out)
        remove_if_empty(cfg.out, created)   # a command that failed before writing leaves no folder
