"""What lrpo.set_up needs beyond the paper: loading the data and its held-out set, building the
reward, the tag-following check, and choosing the fast paths on a GPU (not needed to understand LRPO).

The held-out set follows the official data: ``example.py:19-66`` writes ``train.parquet`` and
``test.parquet`` once (10% per language, seed 42), so a ``train`` file with its ``test`` twin
beside it is used as given, as is a recipe's own test split; other data is split here.
"""
from __future__ import annotations

from pathlib import Path

import calibrate
import data
import rollout
from extras import recipes, runlog
from extras.recipes import test_source  # noqa: F401 (where the held-out set comes from)


def load_data(cfg) -> tuple[list, list]:
    """(train, test) Examples of --data; every bad row is a one-line DataError naming --data.
    Held-out questions that also appear in the training data are counted and reported."""
    train, test = _load_data(cfg)
    report_overlap(cfg, train, test)
    return train, test


def report_overlap(cfg, train, test) -> int:
    """Print how many held-out questions (same language and question) are training questions too."""
    seen = {(ex.lang, ex.question.strip()) for ex in train}
    n = sum((ex.lang, ex.question.strip()) in seen for ex in test)
    if n:
        print(f"[data] warning: {n} of {len(test)} held-out questions also appear in the training data "
              f"(--data {cfg.data}, same language and question): the evaluation is not held out for them")
    return n


def _load_data(cfg) -> tuple[list, list]:
    try:
        if cfg.data == "toy":
            if cfg.test_data not in (None, "none"):   # never ignored in silence
                raise data.DataError(f"--test-data {cfg.test_data}: the built-in world (--data toy) "
                                     f"has its own held-out split; drop it, or give --data a file")
            import toy
            return toy.load_split("train"), toy.load_split("test")
        examples = runlog.drop_duplicates(recipes.load_examples(cfg.data, recipe=cfg.recipe), cfg)
        source = test_source(cfg)
        if source is None:
            # the official split: 10% per language, seed 42 whatever the run's --seed (example.py)
            return data.split_examples(examples, cfg.test_fraction, seed=cfg.split_seed)
        if source == "split":
            test = recipes.load_examples(cfg.data, recipe=cfg.recipe, split="test")
        else:
            try:
                test = recipes.load_examples(source, recipe=cfg.recipe)
            except data.DataError as e:   # the held-out file's own flag (or the data's twin file)
                flag = "--test-data" if cfg.test_data else "--data (its test twin)"
                raise data.DataError(f"{flag} {e}") from None
    except data.DataError as e:
        if str(e).startswith("--test-data") or str(e).startswith("--data (its"):
            raise
        raise data.DataError(f"--data: {e}") from None
    where = f"{cfg.data} (its test split)" if source == "split" else f"{source} (as given)"
    print(f"[data] held-out set: {len(test)} questions of {where}; --data is not split")
    return examples, test


def router_prior(path: str | None) -> dict:
    """The router's prior tables from a JSON file {"topic": {name: {lang: w}}, "region": ...}."""
    if not path:
        return {}
    import json
    try:
        prior = json.loads(Path(path).read_text(encoding="utf-8"))
        return {"topic_prior": prior.get("topic"), "region_prior": prior.get("region")}
    except (OSError, ValueError, AttributeError) as e:
        raise data.DataError(f"--router-prior {path}: {e}") from None


def make_scorer(cfg):
    """The reward of Eq. 2-5 (calibrate.RewardScorer, with extras/fast_reward.py's cache) or the
    verifier's (extras/verifier.py)."""
    lid = calibrate.make_lid(cfg.lid_rules or "ours")   # None: a run saved before the flag
    if cfg.reward == "verifier":
        from extras.verifier import VerifierScorer
        return VerifierScorer(gate=cfg.gate, lid=lid)
    from extras.fast_reward import FastRewardScorer   # calibrate.RewardScorer from files, cached
    try:   # stops with a one-line error when calibration is on without this encoder's statistics
        return FastRewardScorer(encoder=cfg.encoder, stats_path=cfg.stats, gate=cfg.gate,
                                calibration=cfg.calibration, lid=lid, encoder_dtype=cfg.encoder_dtype)
    except OSError as e:   # transformers' message for a missing hub id or folder
        raise data.DataError(f"--encoder {cfg.encoder}: could not be loaded: {e}") from None


def filter_prompts(cfg, train, test, tokenizer, languages) -> tuple[list, list]:
    """The official 512-token prompt filter (max_prompt_length, filter_overlong_prompts)."""
    if not cfg.max_prompt_tokens:
        return train, test
    kept = [recipes.filter_long_prompts(split, tokenizer, cfg.max_prompt_tokens, cfg.prompt_style,
                                     languages) for split in (train, test)]
    (train, n_train), (test, n_test) = kept
    if n_train or n_test:
        print(f"[data] dropped {n_train} training and {n_test} held-out questions whose prompt "
              f"exceeds {cfg.max_prompt_tokens} tokens (official filter_overlong_prompts)")
        runlog.check_data(cfg, train, test)
    return train, test


# Methods whose router conditions on topics and regions (the fixed mixes and GRPO do not).
TOPIC_ROUTED = ("lrpo", "ucb", "thompson")
LABEL_TOKENS = 64   # a strict label reply is a few [[...]] tokens: longer ones cannot parse


def is_url(labeller: str) -> bool:
    return labeller.startswith(("http://", "https://"))


def label_cache(cfg) -> Path:
    """Beside the run folder: one cache per labeller, shared by the runs that use it (LRPO and
    its baselines, every seed) and kept when a labelling is interrupted before the run starts."""
    import hashlib
    kind = "policy" if cfg.labeller == "policy" else "url" if is_url(cfg.labeller) else "model"
    who = cfg.model if kind == "policy" else cfg.labeller_name if kind == "url" else cfg.labeller
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(who.rstrip("/")).name)
    digest = hashlib.sha256(f"{kind}\n{who}\n{runlog.redact(cfg.labeller)}".encode()).hexdigest()[:8]
    return Path(cfg.out).parent / "labels" / f"{kind}-{slug}-{digest}.jsonl"


def labeller_ask(cfg, model, tokenizer, sample):
    """What answers the labelling prompts: the policy itself through the run's sampler (greedy),
    another local model, or an OpenAI-compatible endpoint (the paper: gpt-oss-120b)."""
    import os
    from extras import label
    if cfg.labeller == "policy":
        batch = 256 if cfg.device.startswith("cuda") else 16
        return lambda: label.sampler_labeller(sample, model, tokenizer, LABEL_TOKENS, batch)
    if is_url(cfg.labeller):
        return lambda: label.http_labeller(cfg.labeller, cfg.labeller_name,
                                           os.environ.get("OPENAI_API_KEY"))
    return lambda: label.local_labeller(cfg.labeller, cfg.device, LABEL_TOKENS)


def label_data(cfg, model, tokenizer, sample, train, test) -> tuple[list, list]:
    """App. A.2 before training: when most training questions have no topic, label them (and
    the held-out ones) with Figs. 5-6, so that the router learns per topic and region; without
    labels every question shares one uniformly routed row (the paper's Uniform baseline). The
    run keeps the labels it trained with in labels.jsonl; a resumed run reads them from there."""
    from extras import label
    untopiced = sum(ex.topic == data.UNLABELLED_TOPIC for ex in train)
    if cfg.data == "toy":
        return train, test
    if cfg.method not in TOPIC_ROUTED or untopiced * 2 < len(train) or cfg.labeller == "none":
        if cfg.method in TOPIC_ROUTED and cfg.labeller == "none" and untopiced:
            print(f"[label] --labeller none: {untopiced} of {len(train)} training questions have "
                  "no topic and are routed uniformly (lang_policy.py:131-134): for them this run "
                  "is the paper's Uniform baseline (Table 2), not LRPO's learned routing")
        elif recipes.describe_labels(train):
            print(f"[data] {recipes.describe_labels(train)}")
        return train, test
    own = Path(cfg.out) / "labels.jsonl"
    cache = own if cfg.resume else label_cache(cfg)
    if cfg.resume and not own.exists():
        raise data.DataError(f"--resume: {own} is missing: the labels this run trained with are "
                             "gone, and a resumed run never relabels")
    who = f"the policy ({cfg.model})" if cfg.labeller == "policy" else runlog.redact(cfg.labeller)
    print(f"[label] {untopiced} of {len(train)} training questions have no topic: labelling "
          f"them with Figs. 5-6 of App. A.2 by {who}, greedy (cache {cache})")
    labelled, used = label.label_examples(train + test, labeller_ask(cfg, model, tokenizer, sample),
                                          cache, labeller=cfg.labeller_name or (
                                              f"policy {cfg.model}" if cfg.labeller == "policy"
                                              else cfg.labeller),
                                          may_ask=not cfg.resume)
    if not cfg.resume:   # the run's own copy: what it trained with, for its resume
        import json
        from extras.run_io import atomic_write_text
        atomic_write_text(own, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in used.values()))
    train, test = labelled[:len(train)], labelled[len(train):]
    print(f"[label] {label.label_counts(train)}")
    return train, test


def check_tags(cfg, model, tokenizer, train, languages) -> None:
    """Routed rollouts are only rewarded in the tagged language: say if the policy ignores tags."""
    if not cfg.check_tags or cfg.resume:
        return
    from extras.warm_start import tag_following
    share = tag_following(model, tokenizer, train, languages, n=16, style=cfg.prompt_style)
    print(f"[lrpo] the policy answers in the requested language in {share:.0%} of "
          f"{min(16, len(train))} test prompts")
    if share < 0.5:
        print("[lrpo] warning: most routed rollouts will fail the language gate (reward 0). The "
              "paper warm-starts the policy first (python -m extras.warm_start), or use "
              "--prompt-style zero")


def speed_paths(cfg, model, reference):
    """(sample, logprobs, update): the core's functions (update None: lrpo.policy_update), or
    their twins with the same values where they pay: CUDA-graph sampling in chunks that fit, the
    fused vocabulary head, compiled layers and the device-resident update on a GPU; mini-batches
    and PPO epochs (extras/fast_training.policy_update) anywhere."""
    import math
    from extras import fast_training
    sample, logprobs, update = rollout.sample, rollout.token_logprobs, None
    on_gpu = cfg.device.startswith("cuda")
    if on_gpu or cfg.rollout_batch:   # (it falls back to extras/any_model.py for other families)
        from extras.fast_rollout import in_chunks, sample as fast_sample
        sample = in_chunks(fast_sample, cfg.rollout_batch)
    elif not rollout.has_llama_forward(model, math.inf):   # Gemma 3 etc.: their own forward
        from extras.any_model import sample as any_sample
        sample = any_sample
    if on_gpu:
        logprobs = fast_training.token_logprobs
    if on_gpu or cfg.ppo_epochs > 1 or cfg.mini_batch:
        update = fast_training.policy_update
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.compile:
        for m in (model, reference):
            if m is not None:
                fast_training.compile_layers(m)
    return sample, logprobs, update
