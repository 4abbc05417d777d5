"""The command line of lrpo.py, generated from its Config (not needed to understand LRPO).

Each field of ``lrpo.Config`` becomes a flag (``--questions-per-step``); its help text is the
field's comment in lrpo.py, and the value shown in brackets is each preset's. A preset is a dict
of overrides of Config's defaults (the built-in world's values): ``real`` for any real model,
``cpu-demo`` for ``--model smollm2`` without a GPU. ``--resume`` restores the saved configuration
of the run folder; only MAY_CHANGE_ON_RESUME may be given again with new values. The checks of
flag values happen here and in extras/runlog.py (``check_flags``), once, at the edge.
"""
from __future__ import annotations

import argparse
import inspect
import re
from dataclasses import asdict, fields
from pathlib import Path

import torch

import bandit
import calibrate
import data
import loss
from extras import runlog

METHODS = bandit.METHODS + ("ucb", "thompson")   # the last two: extras/routers.py, beyond the paper
CHOICES = {
    "preset": ("toy", "cpu-demo", "real"), "prompt_style": data.PROMPT_STYLES, "method": METHODS,
    "router_norm": ("zscore", "center", "none"), "router_regions": ("regional-topics", "any", "none"),
    "untopiced": ("uniform", "learn"), "reward": ("similarity", "verifier"),
    "lid_rules": calibrate.LID_RULES, "gate": calibrate.GATES, "calibration": calibrate.CALIBRATIONS,
    "encoder_dtype": ("float32", "bfloat16"), "loss_agg": loss.AGG_MODES,
    "dtype": ("float32", "bfloat16"),
}

# --help lists the flags in these groups (every field of Config is in one; a test checks)
HELP_GROUPS = {
    "model and data": ("preset", "model", "data", "recipe", "test_data", "test_fraction",
                       "split_seed", "keep_duplicates", "langs", "prompt_style", "max_prompt_tokens"),
    "method and router (Alg. 1, Eq. 1, 6, 7)": (
        "method", "group_size", "orig_lang_min", "router_alpha", "router_update_every",
        "router_tau_decay", "router_eps_decay", "router_norm", "router_regions", "untopiced",
        "router_prior", "scale_router_schedule", "labeller", "labeller_name"),
    "reward (Eq. 2-5)": ("reward", "gate", "lid_rules", "calibration", "stats", "encoder",
                         "encoder_dtype"),
    "schedule": ("questions_per_step", "max_new_tokens", "temperature", "steps", "epochs"),
    "loss and optimizer": ("lr", "weight_decay", "grad_clip", "kl_coef", "loss_agg",
                           "loss_micro_batch", "std_norm", "ppo_epochs", "mini_batch"),
    "run": ("seed", "out", "resume", "allow_data_change", "max_skipped", "eval_every", "eval_size",
            "save_every", "keep_checkpoints",
            "samples_per_step", "progress", "check_tags", "plot"),
    "speed and memory (same results up to rounding)": ("device", "dtype", "threads", "micro_batch",
                                        "logprob_micro_batch", "gradient_checkpointing", "compile",
                                        "ref_on_cpu", "rollout_batch"),
}
HELP_TOP = """examples:
  python lrpo.py                                      # LRPO on the built-in world, CPU, ~5 min
  python lrpo.py --model ws/ --data hs.labelled.jsonl # a real run on one GPU, paper defaults

Presets: a flag shown as [toy: A, cpu-demo: B, real: C] takes the preset's value unless given; the
preset follows --model (toy: the built-in model; cpu-demo: --model smollm2 without a GPU; real:
any other model) or is named with --preset."""

# `--resume` restores everything else from <out>/config.json: the run's length and logging, and
# knobs of memory and speed that leave the computed values unchanged, may change.
MAY_CHANGE_ON_RESUME = ("steps", "epochs", "eval_every", "save_every", "samples_per_step",
                        "progress", "threads", "device", "compile", "micro_batch",
                        "logprob_micro_batch", "gradient_checkpointing", "ref_on_cpu", "max_skipped",
                        "keep_checkpoints", "allow_data_change")


def field_comments(config_cls) -> dict[str, str]:
    """The comment after each field of ``config_cls``. A comment-only line continues the field's
    comment when it is indented further than the field (its ``#`` under the field's comment); one
    at the field's own indentation is a section title (``# the reward (Eq. 2-5)``) and ends it."""
    comments, last, indent = {}, None, 0
    for line in inspect.getsource(config_cls).splitlines():
        field_line = re.match(r"(\s+)(\w+): [^=]+=.*?#\s?(.*)$", line)
        more = re.match(r"(\s+)#\s?(.*)$", line)
        if field_line:
            indent, last = len(field_line.group(1)), field_line.group(2)
            comments[last] = field_line.group(3).strip()
        elif more and last and len(more.group(1)) > indent:
            comments[last] += " " + more.group(2).strip()
        else:
            last = None
    return comments


def build_parser(config_cls, presets: dict) -> argparse.ArgumentParser:
    """The command line, generated from the fields of ``config_cls``, in HELP_GROUPS."""
    parser = argparse.ArgumentParser(
        description=inspect.getmodule(config_cls).__doc__.split("\n\n")[0] + "\n\n" + HELP_TOP,
        allow_abbrev=False,
        usage="python lrpo.py [--flag value ...] (the flags, by group, below)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    titled = {title: parser.add_argument_group(title) for title in HELP_GROUPS}
    groups = {name: titled[title] for title, names in HELP_GROUPS.items() for name in names}
    comments = field_comments(config_cls)
    for f in fields(config_cls):
        overrides = [f"{name}: {values[f.name]}" for name, values in presets.items()
                     if f.name in values and name != "toy"]
        shown = ", ".join([f"toy: {f.default}"] + overrides) if overrides else f"default: {f.default}"
        kwargs = dict(default=argparse.SUPPRESS)
        if f.name in CHOICES:
            kwargs["choices"] = CHOICES[f.name]
        if f.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = f.type
        groups[f.name].add_argument("--" + f.name.replace("_", "-"), help=f"{comments[f.name]} [{shown}]",
                                    **kwargs)
    return parser


def choose_preset(named: dict) -> str:
    """--preset if given; else toy for the built-in model, cpu-demo for smollm2 without a GPU
    (the real preset's 256 x 8 rollouts of 1,024 tokens would take days there), else real."""
    if named["preset"]:
        return named["preset"]
    if named["model"] == "toy":
        return "toy"
    device = named["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
    if named["model"] == "smollm2" and not device.startswith("cuda"):
        print("[lrpo] no GPU: --model smollm2 runs the cpu-demo preset (the built-in world's "
              "questions, offline reward, 4 small steps); --preset real for the paper's sizes")
        return "cpu-demo"
    return "real"


def default_out(named: dict) -> str:
    """runs/<method>-<data>-<model>-s<seed>: what tells two runs apart (runlog numbers it)."""
    data_name = named["data"]
    short = lambda name: Path(name.rstrip("/")).stem if name.endswith(
        (".jsonl", ".json", ".parquet", ".gguf")) else name.rstrip("/").split("/")[-1]
    return f"runs/{named['method']}-{short(data_name)}-{short(named['model'])}-s{named['seed']}"


def as_saved_before_lid_rules(saved: dict) -> dict:
    """A run saved before the official real-run defaults (no lid_rules field) resumes with what
    it did then: our LID rules, a learned row for untopiced questions, the encoder in bf16 on
    CUDA, --data split here, and English added to the data's languages."""
    if "lid_rules" in saved:
        return saved
    langs = ",".join(["en"] + ([saved["langs"]] if saved.get("langs") else []))
    device = saved.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    return {**saved, "lid_rules": "ours", "untopiced": "learn", "test_data": "none",
            "langs": saved.get("langs") if saved.get("data") == "toy" else langs,
            "encoder_dtype": "bfloat16" if str(device).startswith("cuda") else "float32"}


def with_preset(given: dict, named: dict, presets: dict) -> dict:
    """The preset's overrides of the defaults, less those the given flags replace."""
    name = choose_preset(named)
    preset = {**presets.get(name, {}), "preset": name}
    if "steps" in given or "epochs" in given:   # one of them sets the length of the run
        preset.update(steps=None, epochs=None)
    if "encoder" in given:   # the preset's statistics belong to the preset's encoder
        preset.pop("stats", None)
    if named["reward"] == "verifier":   # numeric answers need language-neutral numbers
        preset["lid_rules"] = "ours"
    return preset


def parse_args(argv, config_cls, presets: dict):
    """A Config from the command line (flags > preset > the built-in world's defaults)."""
    parser = build_parser(config_cls, presets)
    given = vars(parser.parse_args(argv))   # only the flags on the command line
    named = {**asdict(config_cls()), **given}
    preset = with_preset(given, named, presets) if not given.get("resume") else {}
    named = {**named, **preset, **given}
    if given.get("plot"):   # only redraws a run's plots: no run folder is picked or announced
        out = named["out"] or default_out(named)
    else:
        out = named["out"] if named["out"] is not None else \
            runlog.default_out(default_out(named), bool(given.get("resume")))
    if not out.strip():   # before --resume reads <out>/config.json: "" would be the current folder
        runlog.fail("--out is empty; give a folder")
    if given.get("resume"):
        saved = runlog.resumed_config(given, out, MAY_CHANGE_ON_RESUME, fields(config_cls), CHOICES)
        cfg = config_cls(**as_saved_before_lid_rules(saved))
    else:
        cfg = config_cls(**{**preset, **given, "out": out})
    if cfg.steps is None and cfg.epochs is None:
        parser.error("give --steps or --epochs")
    if cfg.logprob_micro_batch is None:
        cfg.logprob_micro_batch = 4 * cfg.micro_batch
    runlog.check_flags(cfg)
    return cfg
