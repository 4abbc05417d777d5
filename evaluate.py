"""Per-language evaluation on the paper's benchmarks: generate or load answers, score, report (§4.3, App. B.3, C.2).

The paper reports every benchmark per language and summarises it as **Seen / Unseen / Avg**:
"Seen" languages are the training (rollout) languages L, "Unseen" the held-out ones, and Avg the
mean over all languages, which equals the Seen/Unseen mean weighted by language counts.
With acc_ℓ the accuracy in language ℓ of a benchmark's language set 𝓛_b:

    Seen = mean_{ℓ ∈ 𝓛_b ∩ L} acc_ℓ      Unseen = mean_{ℓ ∈ 𝓛_b \\ L} acc_ℓ      Avg = mean_{ℓ ∈ 𝓛_b} acc_ℓ

and the Overall columns are plain means of the benchmarks' Seen, Unseen and Avg values.

How each benchmark is scored (loaders, schemas and scoring rules: ``benchmarks.py``):

* **mGSM / mGSM-v2**: 0-shot greedy answer; correct iff the final number equals the gold number,
  decided by the reward's own verifier ``extras.verifier.verify_number`` (any digits, any script; the
  paper does not say how it extracts mGSM answers).
* **Global-MMLU-Lite, Include-Lite**: the paper uses lm-eval-harness, i.e. log-likelihood of
  the option letters after "...\\nAnswer:" (``--mc-scoring loglik``, needs the model). The
  default ``extract`` reads the letter out of a greedy answer, robust to languages and scripts
  (answer cues in 25 languages, full-width letters, Cyrillic/Greek look-alikes, Arabic letter
  labels, and an option's text as a last resort); an answer with no letter counts as wrong and
  is reported as unparsed.
* **CARE-pro**: an LLM judge in the SimpleQA style with the paper's four labels (App. B.3);
  only CORRECT counts. The judge prompt is our own wording, not the paper's Fig. 7. A judge
  reply that names no single label counts as wrong and is reported as unparseable, never guessed.
  The judge is a local ``transformers`` model or an OpenAI-compatible HTTP endpoint; every raw
  reply is saved next to the results.
* **toy**: the built-in world's test split, scored by ``toy.is_correct``, also per topic.

For the generative benchmarks the share of answers written in the question's language (the
reward's language ID, ``calibrate.detect_languages``) is reported next to the accuracy.

Not done here: the CARE test-set score (paper Table 1 column "CARE": 1-10 LLM-judge ratings
following CARE's own protocol, ×10).

Usage::

    python evaluate.py --model Qwen/Qwen2.5-1.5B-Instruct --bench mgsm,global-mmlu-lite --out runs/eval
    python evaluate.py --bench mgsm --bench-file mgsm.jsonl --predictions preds.jsonl --out runs/eval
    python evaluate.py --compare base=runs/base grpo=runs/grpo lrpo=runs/lrpo --out runs/cmp
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import data
from calibrate import in_language   # the reward's gate: same language, or language-neutral (numbers)
from extras.benchmarks import (BENCHMARKS, LETTERS, MULTIPLE_CHOICE, Item, Record, eval_lang_code,
                        load_benchmark, score_care_pro, score_mgsm, score_multiple_choice, score_toy)
from data import DataError
from data import held_out_questions  # noqa: F401 (the training loop's held-out draw)
from extras.recipes import read_rows
from extras import runlog

MAX_NEW_TOKENS = {"mgsm": 512, "global-mmlu-lite": 64, "include-lite": 64, "care-pro": 256, "toy": 48}
GROUP_KEYS = {"toy": "per_topic", "global-mmlu-lite": "per_cultural_label", "include-lite": "per_domain",
              "care-pro": "per_type"}


def transformers_judge(model_name: str, device: str, max_new_tokens: int = 16,
                       batch_size: int = 16) -> Callable[[list[str]], list[str]]:
    """A local judge: the prompt as one user turn through the model's chat template, greedy."""
    model, tokenizer = load_model(model_name, device)

    def judge(prompts: list[str]) -> list[str]:
        chats = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in prompts]
        return generate(model, tokenizer, chats, max_new_tokens, batch_size)
    return judge


def http_judge(url: str, model: str, max_tokens: int = 16, timeout: float = 120.0,
               api_key_env: str = "OPENAI_API_KEY") -> Callable[[list[str]], list[str]]:
    """A judge behind an OpenAI-compatible ``/chat/completions`` endpoint (vLLM, SGLang, ...).
    The key in ``$api_key_env``, if set, is sent with every request; sending it unencrypted to
    another machine (plain ``http://``, not localhost) is warned about once."""
    import urllib.error
    import urllib.parse
    import urllib.request
    import warnings
    from http.client import InvalidURL
    from extras.endpoints import check_url, http_hint, redact, scrub
    endpoint = check_url(url, "--judge-url").rstrip("/")
    if not endpoint.endswith("/chat/completions"):
        endpoint += "/chat/completions"
    headers = {"Content-Type": "application/json"}
    if os.environ.get(api_key_env):
        headers["Authorization"] = f"Bearer {os.environ[api_key_env]}"
        parsed = urllib.parse.urlparse(endpoint)
        if parsed.scheme == "http" and parsed.hostname not in ("localhost", "127.0.0.1", "::1"):
            warnings.warn(f"the judge's API key (${api_key_env}) is sent unencrypted to {redact(url)}: plain "
                          f"http to another machine; use https, or unset {api_key_env}", stacklevel=2)

    def ask(prompt: str) -> str:
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}],
                           "temperature": 0.0, "max_tokens": max_tokens}).encode()
        for attempt in range(3):
            try:
                request = urllib.request.Request(endpoint, body, headers)
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return json.loads(response.read())["choices"][0]["message"]["content"] or ""
            except (urllib.error.URLError, TimeoutError, ConnectionError, InvalidURL) as e:
                if attempt == 2 or isinstance(e, InvalidURL) or getattr(e, "code", None) in (400, 401, 403, 404):
                    raise SystemExit(" ".join(f"error: judge endpoint {redact(endpoint)} failed: "
                                              f"{scrub(e, endpoint)}{http_hint(e)}".split())) from None

    def judge(prompts: list[str]) -> list[str]:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(ask, prompts))
    return judge


# ----------------------------------------------------------------------------------------------
# Generation and log-likelihood scoring

def load_model(name: str, device: str):
    """The project's one loader (extras/models.py); a bad --model is a one-line error."""
    from extras.models import ModelLoadError
    from extras.models import load_model as load
    from extras.checkpoints import incomplete_checkpoint
    why = incomplete_checkpoint(name)
    if why:
        raise SystemExit(f"error: --model {why}")
    try:
        return load(name, device)
    except ModelLoadError as e:
        raise SystemExit(f"error: {e}") from None


def eval_prompt(tokenizer, question: str, lang: str, style: str = "tag") -> str:
    """The chat prompt asking for an answer in the question's own language ℓ_x (0-shot).

    ``tag``/``zero`` are data.build_prompt's styles; ``plain`` is the bare question, for models
    never trained on the tag. Evaluation-only languages outside data.LANGUAGES get the tag
    written by hand (and ``zero``, which has no system prompt for them, falls back to the tag).
    """
    if style == "plain":
        messages = [{"role": "user", "content": question.strip()}]
    elif lang in data.LANGUAGES:
        return data.build_prompt(tokenizer, question, lang, style)
    else:
        messages = [{"role": "user", "content": question.strip() + f"\n<|out_lang_{lang}|>"}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy completions, longest prompts first (less padding per batch), with progress."""
    from extras.fast_rollout import generate as batched_generate
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    texts: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        for i, text in zip(batch, batched_generate(model, tokenizer, [prompts[i] for i in batch],
                                                   max_new_tokens, batch_size=batch_size)):
            texts[i] = text
        print(f"\r[evaluate] generated {min(start + batch_size, len(order))}/{len(order)}", end="", file=sys.stderr)
    print(file=sys.stderr)
    return texts


def evaluate_split(model, tokenizer, examples, scorer, cfg) -> dict:
    """The training loop's held-out check: greedy answers in each question's own language (as
    the official validation), their reward and, where checkable, accuracy, per language and topic.

    An answer is checkable against the built-in world's gold values (toy.is_correct) or, for an
    example with a numeric answer, by the verifier; accuracy is the mean over the checkable
    examples only, and ``eval/accuracy_n`` says how many of the ``eval/n`` they are (absent when
    none is checkable; other examples count in the reward only).
    """
    import numpy as np
    from extras.fast_rollout import generate as batched_generate
    langs = [ex.lang for ex in examples]
    prompts = [data.build_prompt(tokenizer, ex.question, ex.lang, cfg.prompt_style) for ex in examples]
    texts = batched_generate(model, tokenizer, prompts, cfg.max_new_tokens, seed=cfg.seed)
    references = [ex.answer for ex in examples]
    if cfg.reward == "verifier":
        from extras.verifier import gold
        references = [gold(ex) for ex in examples]
    result = scorer.score(texts, langs, references, langs, list(range(len(examples))))
    from extras.verifier import verify_number
    if cfg.data == "toy":
        import toy
        correct = [toy.is_correct(ex, text) for ex, text in zip(examples, texts)]
    else:   # None: not checkable
        correct = [None if ex.answer_number is None else verify_number(text, ex.answer_number, lang=ex.lang)
                   for ex, text in zip(examples, texts)]
    out = {"eval/n": len(examples), "eval/reward": float(np.mean(result.reward)),
           "eval/in_language": float(np.mean(result.gate))}
    checked = [i for i, c in enumerate(correct) if c is not None]
    if checked:
        out["eval/accuracy"] = float(np.mean([correct[i] for i in checked]))
        out["eval/accuracy_n"] = len(checked)
    for lang in sorted(set(langs)):
        rows = [i for i, l in enumerate(langs) if l == lang]
        out[f"eval/reward/{lang}"] = float(np.mean(result.reward[rows]))
        for topic in [None] + sorted({examples[i].topic for i in rows}):
            mine = [correct[i] for i in rows if correct[i] is not None and topic in (None, examples[i].topic)]
            if mine:
                out[f"eval/accuracy/{lang}" if topic is None else f"eval/accuracy/{topic}/{lang}"] = float(np.mean(mine))
    return out


def loglik_choices(model, tokenizer, items: list[Item], style: str = "tag", batch_size: int = 8) -> list[str]:
    """lm-eval-harness style multiple choice: argmax_k log p(letter_k | prompt), with the chat
    prompt of :func:`eval_prompt`. Each (prompt, letter) pair is one row: the prompt left-padded,
    the letter's tokens after it, scored by ``rollout.token_logprobs`` (the training log-probs)."""
    import torch
    from rollout import token_logprobs
    pairs = []  # (item index, letter, prompt ids, letter ids)
    for i, item in enumerate(items):
        prompt_ids = tokenizer(eval_prompt(tokenizer, item.question, item.lang, style),
                               add_special_tokens=False).input_ids
        for letter in LETTERS[:len(item.options)]:
            pairs.append((i, letter, prompt_ids, tokenizer(letter, add_special_tokens=False).input_ids))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores: dict[int, dict[str, float]] = {}
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        width, tail = max(len(p) for _, _, p, _ in batch), max(len(c) for *_, c in batch)
        ids = [[pad] * (width - len(p)) + p + c + [pad] * (tail - len(c)) for _, _, p, c in batch]
        mask = [[0] * (width - len(p)) + [1] * (len(p) + len(c)) + [0] * (tail - len(c)) for _, _, p, c in batch]
        with torch.no_grad():
            logp = token_logprobs(model, torch.tensor(ids, device=device), torch.tensor(mask, device=device), width)
        for row, (i, letter, _, cont) in enumerate(batch):
            scores.setdefault(i, {})[letter] = logp[row, :len(cont)].sum().item()
    return [max(scores[i], key=scores[i].get) for i in range(len(items))]


# ----------------------------------------------------------------------------------------------
# Aggregation and reports

def summarize(bench: str, records: list[Record], train_langs: set[str]) -> dict:
    """Per-language accuracy and count, their macro mean, and the paper's Seen / Unseen / Avg."""
    by_lang: dict[str, list[Record]] = {}
    for r in records:
        by_lang.setdefault(r.lang, []).append(r)
    per_language = {}
    for lang in sorted(by_lang):
        rs = by_lang[lang]
        per_language[lang] = {"accuracy": sum(r.correct for r in rs) / len(rs), "n": len(rs),
                              "unparsed": sum(r.status in ("unparsed", "unparseable") for r in rs)}
        if any(r.answer_lang is not None for r in records):
            per_language[lang]["in_language"] = sum(in_language(r.answer_lang, lang) for r in rs) / len(rs)
        if bench == "care-pro":
            per_language[lang]["labels"] = {s: sum(r.status == s for r in rs)
                                            for s in sorted({r.status for r in rs})}
    seen = [l for l in per_language if l in train_langs]
    unseen = [l for l in per_language if l not in train_langs]

    def mean(langs):
        return sum(per_language[l]["accuracy"] for l in langs) / len(langs) if langs else None
    result = {"per_language": per_language, "macro": mean(list(per_language)), "seen": mean(seen),
              "unseen": mean(unseen), "avg": mean(list(per_language)), "seen_languages": seen,
              "unseen_languages": unseen, "n": len(records),
              "unparsed": sum(v["unparsed"] for v in per_language.values())}
    groups = sorted({r.group for r in records if r.group})
    if groups and bench in GROUP_KEYS:
        result[GROUP_KEYS[bench]] = {
            g: {"accuracy": sum(r.correct for r in records if r.group == g) / sum(r.group == g for r in records),
                "n": sum(r.group == g for r in records)} for g in groups}
    return result


def overall(results: dict) -> dict:
    """The paper's Overall columns: means of the benchmarks' Seen, Unseen and Avg values."""
    out = {}
    for key in ("seen", "unseen", "avg"):
        values = [r[key] for b, r in results.items() if b != "toy" and r.get(key) is not None]
        out[key] = sum(values) / len(values) if values else None
    return out


def _pct(x) -> str:
    return "   -  " if x is None else f"{100 * x:6.2f}"


def format_table(bench: str, summary: dict) -> str:
    lid = any("in_language" in row for row in summary["per_language"].values())
    lines = [f"== {bench}", f"  {'lang':<6}{'':7}{'n':>6}  {'acc%':>6}  {'unparsed':>8}" + ("  in-lang%" if lid else "")]
    for lang, row in summary["per_language"].items():
        tag = "seen" if lang in summary["seen_languages"] else "unseen"
        lines.append(f"  {lang:<6}{tag:<7}{row['n']:>6}  {_pct(row['accuracy'])}  {row['unparsed']:>8}"
                     + (f"   {_pct(row.get('in_language'))}" if lid else ""))
    for name, rows in ((k, v) for k, v in summary.items() if k.startswith("per_") and k != "per_language"):
        for group, row in rows.items():
            lines.append(f"  {name[4:]}={group:<14}{row['n']:>5}  {_pct(row['accuracy'])}")
    lines.append(f"  Seen {_pct(summary['seen'])} | Unseen {_pct(summary['unseen'])} | Avg {_pct(summary['avg'])}")
    return "\n".join(lines)


def plot_per_language(bench: str, summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    langs = list(summary["per_language"])
    accs = [100 * summary["per_language"][l]["accuracy"] for l in langs]
    colors = ["tab:blue" if l in summary["seen_languages"] else "tab:orange" for l in langs]
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(langs) + 1.5), 3.2))
    ax.bar(langs, accs, color=colors)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{bench}: Seen {_pct(summary['seen']).strip()} (blue) / Unseen "
                 f"{_pct(summary['unseen']).strip()} (orange) / Avg {_pct(summary['avg']).strip()}", fontsize=9)
    ax.tick_params(axis="x", labelsize=8, rotation=90 if len(langs) > 16 else 0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare_runs(runs: dict[str, dict]) -> dict:
    """Side-by-side rows (languages, then Seen / Unseen / Avg) per benchmark, with each run's
    difference from the first run (the baseline), in accuracy points."""
    names = list(runs)
    base = names[0]
    benches = [b for b in dict.fromkeys(b for r in runs.values() for b in r)]
    table = {}
    for bench in benches:
        langs = sorted({l for r in runs.values() for l in r.get(bench, {}).get("per_language", {})})
        rows = {}
        for row in langs + ["seen", "unseen", "avg"]:
            rows[row] = {n: (runs[n].get(bench, {}).get("per_language", {}).get(row, {}).get("accuracy")
                             if row in langs else runs[n].get(bench, {}).get(row)) for n in names}
        delta = {n: {row: (None if v[n] is None or v[base] is None else v[n] - v[base])
                     for row, v in rows.items()} for n in names[1:]}
        table[bench] = {"rows": rows, "delta_vs_" + base: delta}
    return table


def format_comparison(table: dict, names: list[str]) -> str:
    base = names[0]
    lines = []
    for bench, t in table.items():
        header = ["row"] + names + [f"{n}-{base}" for n in names[1:]]
        lines += [f"### {bench}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row, values in t["rows"].items():
            deltas = [t["delta_vs_" + base][n][row] for n in names[1:]]
            cells = [_pct(values[n]).strip() for n in names] + \
                    ["-" if d is None else f"{100 * d:+.2f}" for d in deltas]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_comparison(bench: str, t: dict, names: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = list(t["rows"])
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(rows) * len(names) / 2 + 2), 3.4))
    for k, name in enumerate(names):
        ax.bar([i + k * width for i in range(len(rows))],
               [100 * (t["rows"][r][name] or 0) for r in rows], width, label=name)
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(rows))], rows, fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(bench)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Saved predictions

def read_predictions(path: str, items: list[Item], allow_missing: bool = False) -> list[str]:
    """Predictions rows ``{"id", "prediction"}`` (plus ``"lang"`` where ids repeat across
    languages), returned in the order of ``items``."""
    by_key = {(it.id, it.lang): it for it in items}
    langs_of: dict[str, list[str]] = {}
    for it in items:
        langs_of.setdefault(it.id, []).append(it.lang)
    found: dict[tuple, str] = {}
    ignored = 0
    for i, row in read_rows(path):
        where = f"{path}: row {i}"
        if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("prediction"), str):
            raise DataError(f"{where}: expected {{\"id\", \"prediction\": string}}, got {row!r:.120}")
        rid = str(row["id"])
        if row.get("lang"):
            key = (rid, eval_lang_code(row["lang"], f"{where}: field 'lang'"))
        elif len(langs_of.get(rid, [])) == 1:
            key = (rid, langs_of[rid][0])
        elif rid in langs_of:
            raise DataError(f"{where}: id {rid!r} exists in languages {langs_of[rid]}; add a 'lang' field")
        else:
            key = (rid, None)
        if key not in by_key:  # not selected (--langs, --limit) or unknown; missing ones are caught below
            ignored += 1
            continue
        if key in found:
            raise DataError(f"{where}: second prediction for id {rid!r} ({key[1]})")
        found[key] = row["prediction"]
    if ignored:
        print(f"[evaluate] {path}: ignored {ignored} predictions for items not selected or not in the benchmark")
    missing = [k for k in by_key if k not in found]
    if missing and not allow_missing:
        raise DataError(f"{path}: no prediction for {len(missing)} of {len(items)} items (first: id "
                        f"{missing[0][0]!r}, lang {missing[0][1]!r}); pass --allow-missing to count them wrong")
    return [found.get((it.id, it.lang), "") for it in items]


# ----------------------------------------------------------------------------------------------
# Command line

def evaluate_benchmark(bench: str, items: list[Item], args, model=None, tokenizer=None, judge=None,
                       out_dir: Path | None = None) -> list[Record]:
    """Predictions (saved or generated) for ``items``, scored by the benchmark's rule."""
    if bench in MULTIPLE_CHOICE and args.mc_scoring == "loglik":
        if model is None:
            raise SystemExit("--mc-scoring loglik needs --model (it scores options, not saved answers)")
        letters = loglik_choices(model, tokenizer, items, args.prompt_style, args.batch_size)
        return [Record(it.id, it.lang, it.group, it.gold, l, l, l == it.gold, "loglik")
                for it, l in zip(items, letters)]
    if args.predictions:
        predictions = read_predictions(args.predictions, items, args.allow_missing)
    else:
        prompts = [eval_prompt(tokenizer, it.question, it.lang, args.prompt_style) for it in items]
        predictions = generate(model, tokenizer, prompts, args.max_new_tokens or MAX_NEW_TOKENS[bench],
                               args.batch_size)
    if bench in MULTIPLE_CHOICE:
        return score_multiple_choice(items, predictions)
    if bench == "care-pro":
        replies: list[dict] = []
        records = score_care_pro(items, predictions, judge, replies)
        if out_dir is not None:
            write_jsonl(out_dir / "care-pro_judge.jsonl", replies)
    else:
        records = (score_mgsm if bench == "mgsm" else score_toy)(items, predictions)
    # Whether answers come in the question's language (LRPO's language gate, Eq. 4): reported
    # next to accuracy, with the reward's own language ID.
    from calibrate import detect_languages
    for record, code in zip(records, detect_languages([r.prediction for r in records])):
        record.answer_lang = code
    return records


def write_jsonl(path: Path, rows) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=BENCH_FILE_HELP)
    p.add_argument("--bench", default="toy", help=f"comma-separated, from: {', '.join(BENCHMARKS)}")
    p.add_argument("--model", help="hub id, local directory, or 'toy'; generates answers greedily")
    p.add_argument("--bench-file", help="a local JSONL/JSON/Parquet file of one benchmark (see below)")
    p.add_argument("--bench-id", help="another hub id for the (single) benchmark, e.g. an mGSM-v2 copy")
    p.add_argument("--predictions", help="saved answers {id, prediction[, lang]} to score; no model loaded")
    p.add_argument("--allow-missing", action="store_true", help="count items without a prediction as wrong")
    p.add_argument("--langs", help="comma-separated language codes to keep")
    p.add_argument("--limit", type=runlog.ranged(int, 1), help="at most this many items per language")
    p.add_argument("--train-langs", default=",".join(data.ROLLOUT_LANGUAGES),
                   help="the 'Seen' languages (default: the 15 rollout languages)")
    p.add_argument("--out", required=True, help="output folder (results.json, plots, predictions)")
    p.add_argument("--prompt-style", default="tag", choices=("tag", "zero", "plain"),
        help="tag: the official <|out_lang_xx|> tag; zero: the paper's Zero system prompt; "
             "plain: the question alone")
    p.add_argument("--mc-scoring", default="extract", choices=("extract", "loglik"),
        help="multiple choice: read the letter out of a greedy answer, or the option letters' "
             "log-likelihood (lm-eval style)")
    p.add_argument("--max-new-tokens", type=runlog.ranged(int, 1), help=f"default per benchmark: {MAX_NEW_TOKENS}")
    p.add_argument("--batch-size", type=runlog.ranged(int, 1), default=32, help="questions per generation batch")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--judge-model", help="CARE-pro judge: a local transformers model")
    p.add_argument("--judge-url", help="CARE-pro judge: OpenAI-compatible base URL (key from $OPENAI_API_KEY)")
    p.add_argument("--judge-name", help="model name to send to --judge-url")
    p.add_argument("--judge-max-tokens", type=runlog.ranged(int, 1), default=16,
        help="longest judge reply (it names one label)")
    p.add_argument("--compare", nargs="+", metavar="NAME=PATH",
                   help="compare runs side by side: results.json files or their folders, baseline first")
    return p.parse_args(argv)


BENCH_FILE_HELP = """\
--bench-file fields per benchmark (the hub schemas; 'lang' is a code or English name):
  mgsm              {"id", "lang", "question", "answer_number"}
  global-mmlu-lite  {"sample_id" or "id", "lang", "question", "option_a".."option_d", "answer": "A".."D",
                     "cultural_sensitivity_label"?}
  include-lite      {"id"?, "language", "question", "choices": [...] or "option_a".."option_d",
                     "answer": 0-based index, "domain"?}
  care-pro          {"id"?, "lang" or "language", "question", "answer" (or gold/reference/target), "type"?}
--predictions rows: {"id", "prediction"} plus "lang" where an id repeats across languages.
"""


def main(argv=None) -> dict:
    args = parse_args(argv)
    out_dir = Path(args.out)   # created when there is something to write: a failed command leaves none
    if args.compare:
        return run_compare(args.compare, out_dir)
    benches = [b.strip() for b in args.bench.split(",") if b.strip()]
    for b in benches:
        if b not in BENCHMARKS:
            raise SystemExit(f"--bench: unknown benchmark {b!r}; choose from {', '.join(BENCHMARKS)}")
    if (args.bench_file or args.predictions or args.bench_id) and len(benches) != 1:
        raise SystemExit("--bench-file, --bench-id and --predictions apply to a single --bench")
    if not args.predictions and not args.model:
        raise SystemExit("give --model to generate answers, or --predictions to score saved ones")
    if "care-pro" in benches and not (args.judge_model or args.judge_url):
        raise SystemExit("care-pro needs a judge: --judge-model PATH or --judge-url URL --judge-name NAME")
    for flag, path in (("--bench-file", args.bench_file), ("--predictions", args.predictions)):
        if path and not Path(path).is_file():   # before any model loads
            raise SystemExit(f"error: {flag} {path}: no such file")
    from extras.models import check_device, check_model, go_offline_if_unreachable, quiet_progress_bars
    check_device(args.device)
    quiet_progress_bars()
    if args.model and not args.predictions:   # a typo in --model fails here, in one line
        try:
            check_model(args.model, online=go_offline_if_unreachable())
        except RuntimeError as e:
            raise SystemExit(f"error: {e}") from None
    device = args.device or _default_device()
    model = tokenizer = judge = None
    if args.model and not args.predictions:
        model, tokenizer = load_model(args.model, device)
    if "care-pro" in benches:
        judge = (http_judge(args.judge_url, args.judge_name or "default", args.judge_max_tokens)
                 if args.judge_url else transformers_judge(args.judge_model, device, args.judge_max_tokens))
    train_langs = {l.strip() for l in args.train_langs.split(",") if l.strip()}
    langs = [l.strip() for l in args.langs.split(",")] if args.langs else None
    results = {}
    for bench in benches:
        try:
            items = load_benchmark(bench, args.bench_file or args.bench_id, langs=langs, limit=args.limit)
            out_dir.mkdir(parents=True, exist_ok=True)
            records = evaluate_benchmark(bench, items, args, model, tokenizer, judge, out_dir)
        except DataError as e:   # an unreadable --bench-file or --predictions: one line
            raise SystemExit(f"error: {e}") from None
        write_jsonl(out_dir / f"{bench}_predictions.jsonl", (asdict(r) for r in records))
        results[bench] = summarize(bench, records, train_langs)
        print(format_table(bench, results[bench]))
        plot_per_language(bench, results[bench], out_dir / f"{bench}_per_language.png")
    if len([b for b in results if b != "toy"]) > 1:
        results["overall"] = overall(results)
        print(f"== overall  Seen {_pct(results['overall']['seen'])} | Unseen "
              f"{_pct(results['overall']['unseen'])} | Avg {_pct(results['overall']['avg'])}")
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    print(f"[evaluate] wrote {out_dir / 'results.json'}")
    return results


def run_compare(specs: list[str], out_dir: Path) -> dict:
    runs = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).stem if Path(spec).is_file() else Path(spec).name, spec
        path = Path(path) / "results.json" if Path(path).is_dir() else Path(path)
        if not path.exists():
            raise SystemExit(f"error: --compare {spec}: no such file {path}")
        runs[name] = json.loads(path.read_text(encoding="utf-8"))
    table = compare_runs(runs)
    text = format_comparison(table, list(runs))
    print(text)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.md").write_text(text, encoding="utf-8")
    (out_dir / "comparison.json").write_text(json.dumps(table, indent=2, ensure_ascii=False))
    for bench, t in table.items():
        plot_comparison(bench, t, list(runs), out_dir / f"comparison_{bench}.png")
    return table


def _default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    from extras.interrupt import main_with_one_line_ctrl_c
    main_with_one_line_ctrl_c(main, "evaluate", "nothing of this benchmark was written; run the command again")
