"""The warm start of the paper's main setting (§5.4): teach a policy to follow the language tag.

An instruct model asked ``question + "\\n<|out_lang_zh|>"`` mostly ignores the tag, so most routed
rollouts fail the language gate (reward 0) and LRPO has little to learn from. The paper therefore
starts from a short SFT: 420 prompts sampled from Aya (disjoint from the training data), a teacher
(gpt-oss-20b) answers each in two randomly chosen target languages "via language-conditioned
prompts", and the policy is fine-tuned on these tagged cross-lingual pairs. The paper's other
option, "Zero", skips the SFT and asks for the language in a system prompt (``--prompt-style zero``).

    python -m extras.warm_start build --prompts aya.jsonl --out pairs.jsonl \\
        --teacher-url http://localhost:8000/v1 --teacher-name gpt-oss-20b      # or --teacher PATH
    python -m extras.warm_start sft --model Qwen/Qwen2.5-1.5B-Instruct --pairs pairs.jsonl --out ws/
    python -m extras.warm_start check --model ws/                               # tag-following share
    python lrpo.py --model ws/                                                  # then train

``--prompts`` rows need ``question`` and ``lang`` (any file extras/recipes.py reads).
The teacher sees the question with the target language's Zero system prompt (data.py), which is
our reading of "language-conditioned prompts"; the paper does not print its prompt. Pairs whose
answer fails the reward's own language gate are dropped (counted). :func:`tag_following` is what
``lrpo.py`` runs before a real run to warn when the policy ignores the tag.
"""
from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import data
from extras import recipes, runlog
from extras.endpoints import check_url, http_hint, redact, scrub
from extras.models import ModelLoadError

PAPER_PROMPTS = 420           # prompts sampled from Aya
LANGS_PER_PROMPT = 2          # target languages per prompt


def _warn_plain_http(url: str, api_key: str | None) -> None:
    host = urlparse(url).hostname or ""
    if api_key and urlparse(url).scheme == "http" and host not in ("localhost", "127.0.0.1", "::1"):
        print(f"[warm_start] warning: sending an API key over plain http to {redact(url)}", file=sys.stderr)


def http_teacher(url: str, name: str, api_key: str | None = None, max_tokens: int = 512, timeout: float = 120.0):
    """messages -> reply text, from an OpenAI-compatible /chat/completions endpoint."""
    check_url(url, "--teacher-url")
    _warn_plain_http(url, api_key)

    def ask(messages: list[dict]) -> str:
        body = json.dumps({"model": name, "messages": messages, "max_tokens": max_tokens,
                           "temperature": 0.7}).encode()
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
        req = urllib.request.Request(url.rstrip("/") + "/chat/completions", body, headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())["choices"][0]["message"]["content"]
        except (OSError, ValueError, KeyError, IndexError, TypeError, http.client.HTTPException) as e:
            raise SystemExit(" ".join(f"error: teacher endpoint {redact(url)} failed: {type(e).__name__}: "
                                      f"{scrub(e, url)}{http_hint(e)}".split())) from None
    return ask


def local_teacher(model_name: str, device: str = "cpu", max_tokens: int = 512):
    """messages -> reply text, from a local transformers model (sampled at temperature 0.7)."""
    from extras.fast_rollout import generate
    from extras.models import load_model
    model, tokenizer = load_model(model_name, device)

    def ask(messages: list[dict]) -> str:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return generate(model, tokenizer, [prompt], max_tokens, temperature=0.7, seed=random.randrange(2**31))[0]
    return ask


def build_pairs(examples: list[data.Example], ask, langs: list[str], n_prompts: int = PAPER_PROMPTS,
                per_prompt: int = LANGS_PER_PROMPT, seed: int = 0, detect=None) -> tuple[list[dict], int]:
    """Teacher answers of ``n_prompts`` questions, each in ``per_prompt`` random target languages.
    Returns the pairs {question, question_lang, target_lang, response} and how many were dropped
    because the answer was not in the target language (``detect``: texts -> codes)."""
    rng = random.Random(seed)
    chosen = rng.sample(examples, min(n_prompts, len(examples)))
    pairs = []
    for ex in chosen:
        for target in rng.sample(langs, min(per_prompt, len(langs))):
            messages = data.build_messages(ex.question, target, style="zero")
            pairs.append({"id": ex.id, "question": ex.question, "question_lang": ex.lang,
                          "target_lang": target, "response": ask(messages).strip()})
    if detect is None:
        from calibrate import detect_languages as detect
    found = detect([p["response"] for p in pairs])
    kept = [p for p, code in zip(pairs, found) if code == p["target_lang"] and p["response"]]
    return kept, len(pairs) - len(kept)


def sft(model, tokenizer, pairs: list[dict], epochs: int = 2, lr: float = 1e-5, batch_size: int = 8,
        seed: int = 0, log=print) -> list[float]:
    """Supervised fine-tuning on the tagged pairs: the user turn is question + language tag (the
    training prompt, data.build_prompt), the loss is on the teacher's answer and its end-of-turn."""
    import torch
    torch.manual_seed(seed)
    rows = []
    for p in pairs:
        prompt = data.build_prompt(tokenizer, p["question"], p["target_lang"])
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(p["response"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((prompt_ids, answer_ids))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    device = next(model.parameters()).device
    model.train()
    losses = []
    order = list(range(len(rows)))
    for epoch in range(epochs):
        first = len(losses)
        random.Random(seed + epoch).shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = [rows[i] for i in order[start:start + batch_size]]
            width = max(len(a) + len(b) for a, b in batch)
            ids = torch.full((len(batch), width), tokenizer.pad_token_id or 0, dtype=torch.long)
            labels = torch.full_like(ids, -100)
            mask = torch.zeros_like(ids)
            for i, (a, b) in enumerate(batch):   # right padding: positions are plain 0..n-1
                ids[i, :len(a) + len(b)] = torch.tensor(a + b)
                labels[i, len(a):len(a) + len(b)] = torch.tensor(b)
                mask[i, :len(a) + len(b)] = 1
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(out.loss.detach()))
        log(f"[warm_start] epoch {epoch + 1}/{epochs}: mean loss {sum(losses[first:]) / max(1, len(losses) - first):.3f}")
    model.eval()
    return losses


def tag_following(model, tokenizer, examples: list[data.Example], langs: list[str], n: int = 24,
                  max_new_tokens: int = 48, style: str = "tag", seed: int = 0) -> float:
    """Share of greedy answers written in the tagged language, by the reward's own language gate,
    over ``n`` (question, random other language) prompts: what a routed rollout needs."""
    from calibrate import detect_languages, in_language
    from extras.fast_rollout import generate
    rng = random.Random(seed)
    picks = [(ex, rng.choice([l for l in langs if l != ex.lang] or langs)) for ex in rng.sample(examples, min(n, len(examples)))]
    prompts = [data.build_prompt(tokenizer, ex.question, lang, style) for ex, lang in picks]
    found = detect_languages(generate(model, tokenizer, prompts, max_new_tokens))
    return sum(in_language(code, lang) for code, (_, lang) in zip(found, picks)) / max(1, len(picks))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", allow_abbrev=False, help="teacher answers in random target languages -> pairs JSONL")
    b.add_argument("--prompts", required=True, help="questions with a 'lang' (JSONL/JSON/Parquet)")
    b.add_argument("--out", required=True, help="pairs JSONL to write (input of sft --pairs)")
    b.add_argument("--teacher", help="local transformers model (hub id or folder)")
    b.add_argument("--teacher-url", help="OpenAI-compatible base URL (key from $OPENAI_API_KEY)")
    b.add_argument("--teacher-name", default="default", help="model name sent to --teacher-url")
    b.add_argument("--langs", default=",".join(data.ROLLOUT_LANGUAGES), help="target languages")
    b.add_argument("--n-prompts", type=runlog.ranged(int, 1), default=PAPER_PROMPTS,
        help="questions drawn from --prompts (the paper: 420)")
    b.add_argument("--seed", type=runlog.ranged(int, 0, 2**32 - 1), default=0,
        help="seed of the drawn questions and target languages")
    s = sub.add_parser("sft", allow_abbrev=False, help="fine-tune a policy on the pairs; the output folder works as --model")
    s.add_argument("--model", required=True,
        help="policy to fine-tune: hub id, local folder, smollm2 or a .gguf file")
    s.add_argument("--pairs", required=True, help="pairs JSONL written by build")
    s.add_argument("--out", required=True, help="folder to write (then use it as lrpo.py --model)")
    s.add_argument("--epochs", type=runlog.ranged(int, 1), default=2, help="passes over the pairs")
    s.add_argument("--lr", type=runlog.ranged(float, 0), default=1e-5, help="AdamW learning rate")
    s.add_argument("--batch-size", type=runlog.ranged(int, 1), default=8, help="pairs per optimizer step")
    s.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    c = sub.add_parser("check", allow_abbrev=False, help="share of answers in the tagged language")
    c.add_argument("--model", required=True,
        help="policy to check: hub id, local folder, smollm2 or a .gguf file")
    c.add_argument("--prompts", help="questions to ask (default: the built-in world's)")
    c.add_argument("--langs", default=None,
        help="tags to ask for, comma-separated (default: the prompts' languages)")
    c.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = p.parse_args(argv)
    try:
        run_command(p, args)
    except (data.DataError, ModelLoadError) as e:   # bad input: one line naming the flag
        sys.exit(f"error: {e}")


def read_pairs(path: str) -> list[dict]:
    """The rows of ``sft --pairs``, checked before any model loads."""
    if not Path(path).is_file():
        raise data.DataError(f"--pairs {path}: no such file (write it with `python -m extras.warm_start "
                             f"build ... --out {path}`)")
    pairs = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise data.DataError(f"--pairs {path}: row {i} is not JSON ({e})") from None
        missing = [k for k in ("question", "target_lang", "response")
                   if not isinstance(row, dict) or not row.get(k)]
        if missing:
            raise data.DataError(f"--pairs {path}: row {i}: missing field(s) {missing}")
        pairs.append(row)
    if not pairs:
        raise data.DataError(f"--pairs {path}: no pairs in the file")
    return pairs


def load_prompts(flag: str, source: str) -> list:
    """Examples of ``--prompts``: a missing file is one line naming the flag, before any model."""
    if Path(source).suffix in (".jsonl", ".json", ".parquet") and not Path(source).is_file():
        raise data.DataError(f"{flag} {source}: no such file")
    return recipes.load_examples(source)


def checked_model(name: str) -> str:
    """``name`` once checked: a typo or an uncached hub id offline is one line, without retries."""
    from extras.models import check_model, go_offline_if_unreachable
    check_model(name, online=go_offline_if_unreachable())
    return name


def run_command(p, args) -> None:
    import os
    from extras.models import check_device
    device = getattr(args, "device", None)
    check_device(device)
    if device is None and args.command != "build":
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.command == "build":
        if not (args.teacher or args.teacher_url):
            p.error("give --teacher PATH or --teacher-url URL")
        examples = load_prompts("--prompts", args.prompts)   # the input first, then the teacher
        langs = [data.lang_code(x, "--langs") for x in args.langs.split(",")]
        if args.teacher:
            checked_model(args.teacher)
        if not args.teacher_url:
            import torch
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        ask = (http_teacher(args.teacher_url, args.teacher_name, os.environ.get("OPENAI_API_KEY"))
               if args.teacher_url else local_teacher(args.teacher, device))
        pairs, dropped = build_pairs(examples, ask, langs, args.n_prompts, seed=args.seed)
        Path(args.out).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pairs))
        print(f"[warm_start] wrote {len(pairs)} pairs to {args.out}; dropped {dropped} not in the target language")
    elif args.command == "sft":
        from extras.models import load_model
        import torch
        pairs = read_pairs(args.pairs)                      # before the model (and any hub access)
        model, tokenizer = load_model(checked_model(args.model), device, torch.float32)
        sft(model, tokenizer, pairs, args.epochs, args.lr, args.batch_size)
        model.save_pretrained(args.out)
        tokenizer.save_pretrained(args.out)
        print(f"[warm_start] saved {args.out}; train with: python lrpo.py --model {args.out}")
    else:
        from extras.models import load_model
        if args.prompts:
            examples = load_prompts("--prompts", args.prompts)
        else:
            import toy
            examples = toy.load_split("test")
        model, tokenizer = load_model(checked_model(args.model), device)
        langs = sorted({ex.lang for ex in examples}) if args.langs is None else args.langs.split(",")
        share = tag_following(model, tokenizer, examples, langs)
        print(f"[warm_start] {share:.0%} of answers are in the tagged language")

if __name__ == "__main__":
    from extras.interrupt import main_with_one_line_ctrl_c
    main_with_one_line_ctrl_c(main, "warm_start", "nothing was written; run the command again")
