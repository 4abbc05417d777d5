"""Transfer probe (issue 11, item 1): does a fact learnt in language A become known in language B?

LRPO only helps a question's own language if what the policy learns from rollouts in another
language transfers back. This probe measures that transfer in the built-in world's warm-started
model (``toy.load_model_and_tokenizer()``), without any router (and, unless ``--rl``, without the reward):

* **Facts.** The 96 regional facts are split at random (per seed) into a *trained* and a
  *control* half. For a training language A, only facts the warm start did **not** teach in A
  count (``toy.known_in``), so they have headroom in A.
* **Training.** A fresh copy of the warm-started model is fine-tuned on the trained facts of A:
  ``--variant direct`` (default, the issue's probe): asked in A, tagged A, answered in A.
  ``--variant routed`` (what an LRPO routed rollout teaches): asked in every other language X,
  tagged A, answered in A. SFT is full-batch AdamW (``--steps`` 60, ``--lr`` 1e-3, constant:
  enough for ~100% on the trained facts in A in every language). With
  ``--rl`` the update is instead ``lrpo.policy_update`` on K rollouts per trained fact, all in A
  (GRPO restricted to A), rewarded by the paper's calibrated similarity or an oracle.
* **Measurement.** Before and after, every fact is asked in every language B and answered in B
  (tag B): greedy correctness (``toy.is_correct``, the gold name anywhere: "acc"), the same and
  answered in B by the reward's language-ID gate ("acc_in_lang", the strict one), and log p(gold
  answer in B) under the model ("logp"). For a pair (A, B) only facts not taught in B either
  count (taught ones are at ceiling).
* **Transfer ratio** (A, B) = (gain on trained facts in B − gain on control facts in B) /
  (gain on trained facts in A − gain on control facts in A); 1 = everything learnt in A is
  learnt in B, 0 = nothing. For ``routed`` the denominator is the gain on the trained inputs
  themselves (asked in X, answered in A). Pairs are pooled over seeds (mean numerator / mean
  denominator); the headline is the mean over the 30 off-diagonal pairs.

    python bench/transfer_probe.py                          # direct SFT, 6 A × 5 seeds (~5 min)
    python bench/transfer_probe.py --variant routed --seeds 0 1 2    # ~11 min
    python bench/transfer_probe.py --rl similarity --seeds 0 --langs fr,zh   # the RL variant
    python bench/transfer_probe.py --diagnose-reward        # issue 11 item 4: right vs wrong rewards (~2 min)
    python bench/transfer_probe.py --eval-checkpoint runs/X/checkpoint   # accuracy by language and group
    python bench/transfer_probe.py --world famous --seeds 0 1 2 --replay 48  # a candidate world (use_world)

Results and their reading: bench/results_transfer.md.

Importable: ``run_probe(...)`` returns the result dictionary that the script prints as its last
(JSON) line. Always one torch thread (the CPU is shared).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import toy  # noqa: E402
from extras import setup  # noqa: E402
from data import Example, build_prompt  # noqa: E402

LANGS = toy.LANGS
FACTS = [(r, a) for r in toy.REGIONS for a in toy.FACT_TEMPLATES]


def fid(region, attribute) -> str:
    return f"{region.name}-{attribute}"


def example(region, attribute, lang) -> Example:
    q, a, key = toy.fact_qa(region, attribute, lang)
    return Example(fid(region, attribute), q, a, lang, "regional", (region.name,), key=key)


def split_facts(seed: int) -> tuple[set, set]:
    """A random half of the regional facts to train, the other half as control (ids)."""
    ids = [fid(r, a) for r, a in FACTS]
    random.Random(f"transfer-probe-{seed}").shuffle(ids)
    return set(ids[:len(ids) // 2]), set(ids[len(ids) // 2:])


# ----------------------------------------------------------------------------------------------
# Measuring: greedy correctness and log p(gold) for (question language, answer language) probes

@torch.no_grad()
def gold_logprobs(model, tokenizer, prompts: list[str], answers: list[str], batch_size: int = 96) -> list[float]:
    """log p(answer + EOS | prompt), summed over the answer's tokens (teacher forcing)."""
    out = []
    for i in range(0, len(prompts), batch_size):
        rows = []
        for p, a in zip(prompts[i:i + batch_size], answers[i:i + batch_size]):
            pi = tokenizer(p, add_special_tokens=False)["input_ids"]
            ai = tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            rows.append((pi, ai))
        width = max(len(p) + len(a) for p, a in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        mask = torch.zeros(len(rows), width)
        for r, (p, a) in enumerate(rows):
            ids[r, :len(p) + len(a)] = torch.tensor(p + a)
            mask[r, len(p):len(p) + len(a)] = 1.0   # positions of answer tokens
        logp = torch.log_softmax(model(input_ids=ids).logits[:, :-1].float(), -1)
        tok = logp.gather(-1, ids[:, 1:, None])[..., 0]
        out += (tok * mask[:, 1:]).sum(1).tolist()
    return out


def measure(model, tokenizer, probes: list[tuple]) -> dict:
    """probes: (region, attribute, question_lang, answer_lang). Returns {probe key: (correct,
    correct and in the answer language by the reward's language-ID gate, log p(gold))}."""
    from calibrate import detect_languages, in_language
    examples = [example(r, a, q) for r, a, q, _ in probes]
    golds = [example(r, a, t) for r, a, _, t in probes]
    targets = [t for *_, t in probes]
    answers = toy.greedy_answers(model, tokenizer, examples, targets, batch_size=96)
    langs = detect_languages(answers)
    prompts = [build_prompt(tokenizer, e.question, t) for e, t in zip(examples, targets)]
    logps = gold_logprobs(model, tokenizer, prompts, [g.answer for g in golds])
    out = {}
    for (r, a, q, t), g, ans, lang, lp in zip(probes, golds, answers, langs, logps):
        ok = float(toy.is_correct(g, ans))
        out[fid(r, a), q, t] = (ok, ok * in_language(lang, t), lp)
    return out


# ----------------------------------------------------------------------------------------------
# Training on language A

def sft(model, tokenizer, triples, steps: int, lr: float, seed: int, replay: list | None = None,
        n_replay: int = 0):
    """Full-batch SFT on (question, tag language, answer) triples, loss on answer + EOS tokens.
    With ``n_replay``, each step adds that many rows drawn from ``replay`` (encoded warm-start
    rows), as pretraining data keeps flowing while a model learns new facts."""
    rows = toy.encode_sft(tokenizer, triples)   # the warm start's own encoding (loss on answer + EOS)
    gen = random.Random(f"replay-{seed}")
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    model.train()
    for _ in range(steps):
        batch = rows + (gen.sample(replay, n_replay) if n_replay else [])
        loss = toy.sft_loss(model, batch, tokenizer.pad_token_id)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    return loss.item()


class RLTrainer:
    """GRPO restricted to language A through lrpo.policy_update (the loop's own update)."""

    def __init__(self, reward: str, steps: int, lr: float, group: int):
        import lrpo
        self.lrpo, self.reward_kind, self.steps, self.group = lrpo, reward, steps, group
        self.cfg = lrpo.parse_args(["--method", "grpo", "--lr", str(lr), "--threads", "1", "--no-progress"])
        self.cfg.device, self.cfg.dtype, self.cfg.compile = "cpu", "float32", False
        self.cfg.micro_batch = self.cfg.micro_batch or 128
        self.cfg.logprob_micro_batch = self.cfg.logprob_micro_batch or 4 * self.cfg.micro_batch
        self.scorer = setup.make_scorer(self.cfg) if reward == "similarity" else None

    def train(self, model, tokenizer, examples, seed: int) -> float:
        import loss
        import rollout
        lrpo, cfg = self.lrpo, self.cfg
        cfg.seed = seed
        from extras.divergence import Guard
        run = lrpo.Run(cfg, [], [], model, copy.deepcopy(model).requires_grad_(False), tokenizer, self.scorer,
                       None, lrpo.make_optimizer(model, cfg), Guard(), rollout.sample, rollout.token_logprobs,
                       lrpo.policy_update)
        rewards = []
        for step in range(self.steps):
            exs = [e for e in examples for _ in range(self.group)]
            gids = [i for i in range(len(examples)) for _ in range(self.group)]
            prompts = [build_prompt(tokenizer, e.question, e.lang) for e in exs]
            roll = rollout.sample(model, tokenizer, prompts, cfg.max_new_tokens, temperature=cfg.temperature,
                                  seed=lrpo.step_seed(seed, step, 2))
            if self.scorer is not None:
                r = self.scorer.score(roll.texts, [e.lang for e in exs], [e.answer for e in exs],
                                      [e.lang for e in exs], gids).reward
            else:   # oracle: the gold value, in the requested language's script
                r = [float(toy.is_correct(e, t)) for e, t in zip(exs, roll.texts)]
            r = torch.tensor(r, dtype=torch.float32)
            adv, _ = loss.group_advantages(r, gids, norm_by_std=cfg.std_norm)
            shuffle = torch.Generator().manual_seed(lrpo.step_seed(seed, step, lrpo.SEED_SHUFFLE))
            lrpo.policy_update(run, roll, adv, torch.randperm(len(exs), generator=shuffle), step)
            rewards.append(float(r.mean()))
        return statistics.mean(rewards[-3:])


# ----------------------------------------------------------------------------------------------
# Candidate worlds (issue 11, item 2), as patches of toy.py for the probe only

def use_world(variant: str) -> None:
    """Check the world variant. "current" is toy.py as it is (world version 3 when the probe's
    results were measured); version 4 adopted "famous" below, so both names are now that world,
    and the patch that made "famous" from version 3 (``bench/world_famous_patch.py``) is gone: its
    text is toy.py's, and git history keeps the file. The
    version-2 candidates measured in results_transfer.md §3 ("pangu": spaces around Latin names in
    zh/ja, now part of version 3; "pangu+xtag") were patches of version 2 and are gone with it.
    Candidates for the next version:

    * ``famous``: 12 more regions (two per language) whose facts the warm start teaches in *every*
      language, the way pretraining knows famous places in every language. They are not asked in
      RL or in the probe (the probe's facts stay toy.REGIONS'); they add parallel data that ties
      the six languages' templates together, which is what cross-lingual transfer needs.
    """
    if variant not in ("current", "famous"):
        raise ValueError(f"unknown world variant {variant!r}")
    # since world version 4 the built-in world *is* the famous world (toy.FAMOUS): both names
    # are the current world, and the patch that once made it from version 3 is gone (git history)


# ----------------------------------------------------------------------------------------------
# The probe

def ratio(num: float, den: float) -> float:
    return num / den if abs(den) > 1e-9 else math.nan


def run_probe(seeds=(0, 1, 2, 3, 4), train_langs=LANGS, variant: str = "direct", steps: int = 60,
              lr: float = 1e-3, rl: str | None = None, rl_steps: int = 30, rl_lr: float = 1e-4,
              group: int = 8, replay: int = 0, log=print) -> dict:
    """The probe (module docstring) over ``seeds`` × ``train_langs``; returns the matrices per
    metric ("acc", "acc_in_lang", "logp"), pooled ratios, per-seed means and the wall time."""
    torch.set_num_threads(1)
    t0 = time.time()
    base, tokenizer = toy.load_model_and_tokenizer(log=log)
    known = toy.known_in(toy.WorldConfig())
    own = [(r, a, b, b) for r, a in FACTS for b in LANGS]
    extra = [(r, a, x, t) for r, a in FACTS for x in LANGS for t in train_langs if x != t] if variant == "routed" else []
    before = measure(base, tokenizer, own + extra)
    trainer = RLTrainer(rl, rl_steps, rl_lr, group) if rl else None
    replay_rows = toy.encode_sft(tokenizer, toy.sft_pairs(toy.WorldConfig())) if replay else None
    metrics = ("acc", "acc_in_lang", "logp")
    # per seed, per (A, B): numerator and denominator for each metric
    cells: dict = {}
    fit = []
    for seed in seeds:
        trained, control = split_facts(seed)
        for A in train_langs:
            t_a = [(r, a) for r, a in FACTS if fid(r, a) in trained and not known[fid(r, a), A]]
            c_a = [(r, a) for r, a in FACTS if fid(r, a) in control and not known[fid(r, a), A]]
            model = copy.deepcopy(base)
            if trainer is not None:
                fit.append(trainer.train(model, tokenizer, [example(r, a, A) for r, a in t_a], seed))
            else:
                if variant == "direct":
                    triples = [(example(r, a, A).question, A, example(r, a, A).answer) for r, a in t_a]
                else:
                    triples = [(example(r, a, x).question, A, example(r, a, A).answer)
                               for r, a in t_a for x in LANGS if x != A]
                fit.append(sft(model, tokenizer, triples, steps, lr, seed, replay_rows, replay))
            probes = own + [p for p in extra if p[3] == A]
            after = measure(model, tokenizer, probes)
            gain = {k: tuple(x - y for x, y in zip(after[k], before[k])) for k in after}

            def mean_gain(facts, q, t, m):
                vals = [gain[fid(r, a), q, t][m] for r, a in facts]
                return statistics.mean(vals) if vals else math.nan

            for m, name in enumerate(metrics):
                if variant == "direct":
                    den = mean_gain(t_a, A, A, m) - mean_gain(c_a, A, A, m)
                else:
                    den = statistics.mean(mean_gain(t_a, x, A, m) - mean_gain(c_a, x, A, m) for x in LANGS if x != A)
                for B in LANGS:
                    tb = [f for f in t_a if not known[fid(*f), B]]
                    cb = [f for f in c_a if not known[fid(*f), B]]
                    num = mean_gain(tb, B, B, m) - mean_gain(cb, B, B, m)
                    cell = cells.setdefault((name, A, B), {"num": [], "den": [], "n_trained": len(tb),
                                                           "n_control": len(cb)})
                    cell["num"].append(num)
                    cell["den"].append(den)
                    cell.setdefault("gain_trained", []).append(mean_gain(tb, B, B, m))
                    cell.setdefault("gain_control", []).append(mean_gain(cb, B, B, m))
            log(f"[probe] seed {seed} A={A}: {len(t_a)} trained / {len(c_a)} control facts, "
                f"A-gain acc {cells['acc', A, A]['den'][-1]:+.2f}, "
                f"mean off-diagonal acc ratio {statistics.mean(ratio(cells['acc', A, B]['num'][-1], cells['acc', A, B]['den'][-1]) for B in LANGS if B != A):+.2f} "
                f"({time.time() - t0:.0f}s)")

    result = {"world_cache": str(toy.cache_dir()), "variant": variant, "rl": rl, "replay": replay, "seeds": list(seeds), "train_langs": list(train_langs),
              "steps": rl_steps if rl else steps, "lr": rl_lr if rl else lr, "final_train_loss_or_reward": fit,
              "before_accuracy": {}, "matrix": {}, "pooled": {}, "per_seed_mean_offdiag": {}}
    for B in LANGS:   # warm-start accuracy in B on facts not taught in B (the probe's B cells)
        vals = [before[fid(r, a), B, B] for r, a in FACTS if not known[fid(r, a), B]]
        result["before_accuracy"][B] = {name: statistics.mean(v[m] for v in vals) for m, name in enumerate(metrics)}
    for name in metrics:
        mat = {}
        for A in train_langs:
            for B in LANGS:
                c = cells[name, A, B]
                num, den = statistics.mean(c["num"]), statistics.mean(c["den"])
                mat[f"{A}->{B}"] = {"ratio": ratio(num, den), "num": num, "den": den,
                                    "gain_trained": statistics.mean(c["gain_trained"]),
                                    "gain_control": statistics.mean(c["gain_control"]),
                                    "n_trained": c["n_trained"], "n_control": c["n_control"]}
        off = [v for k, v in mat.items() if k.split("->")[0] != k.split("->")[1]]
        result["matrix"][name] = mat
        result["pooled"][name] = {
            "mean_offdiag_ratio": statistics.mean(v["ratio"] for v in off),
            "ratio_of_means": statistics.mean(v["num"] for v in off) / statistics.mean(v["den"] for v in off),
            "mean_A_gain": statistics.mean(mat[f"{A}->{A}"]["num"] for A in train_langs)}
        per_seed = []
        for s in range(len(seeds)):
            rs = [ratio(cells[name, A, B]["num"][s], cells[name, A, B]["den"][s])
                  for A in train_langs for B in LANGS if A != B]
            per_seed.append(statistics.mean(rs))
        result["per_seed_mean_offdiag"][name] = per_seed
    result["wall_s"] = time.time() - t0
    return result


def format_result(res: dict) -> str:
    lines = []
    for name, unit in (("acc", "greedy accuracy"), ("acc_in_lang", "greedy accuracy, answer in B only"),
                       ("logp", "log p(gold answer)")):
        mat = res["matrix"][name]
        lines.append(f"\nTransfer ratio by {unit} (rows: trained language A, columns: measured language B)")
        lines.append("A \\ B " + "".join(f"{b:>8s}" for b in LANGS) + "   mean off-diag")
        for A in res["train_langs"]:
            row = [mat[f"{A}->{B}"]["ratio"] for B in LANGS]
            off = statistics.mean(r for B, r in zip(LANGS, row) if B != A)
            lines.append(f"{A:6s}" + "".join(f"{r:8.2f}" for r in row) + f"   {off:8.2f}")
        dens = [mat[f"{A}->{A}"]["den"] for A in res["train_langs"]]
        lines.append("denominator, gain on the training inputs (trained − control): "
                     + " ".join(f"{A}:{g:+.2f}" for A, g in zip(res["train_langs"], dens)))
        p = res["pooled"][name]
        seeds = res["per_seed_mean_offdiag"][name]
        lines.append(f"mean off-diagonal ratio {p['mean_offdiag_ratio']:.3f} (per seed: "
                     + ", ".join(f"{x:.3f}" for x in seeds) + f"); ratio of mean gains {p['ratio_of_means']:.3f}")
    lines.append(f"\nwall time {res['wall_s']:.0f} s")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Why ja/zh fell (issue 11, item 4): the reward as the policy's own-language rollouts see it

def diagnose_reward(group: int = 8, seed: int = 0, log=print) -> dict:
    """Sample ``group`` rollouts (temperature 1, the toy's 32 new tokens) of every question of
    the world in its own language from the warm start, as GRPO's groups and LRPO's K_on slots
    are, score them with the reward (stats/toy_e5.csv) and compare right and wrong answers per
    language and topic: reward, raw similarity, gate, within-group ranking (the share of
    (right, wrong) pairs of one group in which the right one gets the higher reward, ties ½; what
    decides the sign of GRPO's advantages), response length and truncation."""
    import numpy as np

    import calibrate
    from extras.fast_reward import FastRewardScorer
    import loss
    import rollout
    torch.set_num_threads(1)
    t0 = time.time()
    model, tokenizer = toy.load_model_and_tokenizer(log=log)
    scorer = FastRewardScorer(stats_path=calibrate.TOY_STATS)
    examples = toy.build_examples()
    rows = []
    for i in range(0, len(examples), 64):
        chunk = examples[i:i + 64]
        exs = [e for e in chunk for _ in range(group)]
        gids = [i + j for j in range(len(chunk)) for _ in range(group)]
        prompts = [build_prompt(tokenizer, e.question, e.lang) for e in exs]
        roll = rollout.sample(model, tokenizer, prompts, 32, temperature=1.0, seed=seed * 100_003 + i)
        res = scorer.score(roll.texts, [e.lang for e in exs], [e.answer for e in exs], [e.lang for e in exs], gids)
        adv, _ = loss.group_advantages(torch.tensor(res.reward, dtype=torch.float32), gids)
        for k, e in enumerate(exs):
            ended = bool(roll.completion_ids[k, int(roll.lengths[k]) - 1] == tokenizer.eos_token_id)
            rows.append(dict(lang=e.lang, topic=e.topic, gid=gids[k], text=roll.texts[k], region=(e.region or ("",))[0],
                             correct=bool(toy.is_correct(e, roll.texts[k])), reward=float(res.reward[k]),
                             raw=float(res.raw_similarity[k]), gate=float(res.gate[k]),
                             pred=res.predicted_lang[k], adv=float(adv[k]), tokens=int(roll.lengths[k]),
                             truncated=not ended))
    out = {}
    for topic in ("regional", "arithmetic"):
        for lang in LANGS:
            mine = [r for r in rows if r["lang"] == lang and r["topic"] == topic]
            right = [r for r in mine if r["correct"]]
            wrong = [r for r in mine if not r["correct"]]
            pairs = wins = 0.0
            groups = {}
            for r in mine:
                groups.setdefault(r["gid"], []).append(r)
            mixed = all_wrong_signal = top_is_other_region = 0
            names = [r.name for r in toy.REGIONS]
            for g in groups.values():
                gr = [r["reward"] for r in g if r["correct"]]
                gw = [r["reward"] for r in g if not r["correct"]]
                mixed += bool(gr and gw)
                if not gr and max(gw) - min(gw) > 1e-6:   # all wrong, yet non-zero advantages
                    all_wrong_signal += 1
                    top = max(g, key=lambda r: r["reward"])["text"]
                    top_is_other_region += any(n in top for n in names if n != g[0]["region"])
                for a in gr:
                    for b in gw:
                        pairs += 1
                        wins += 1.0 if a > b else 0.5 if a == b else 0.0
            mean = lambda xs, k: float(np.mean([x[k] for x in xs])) if xs else math.nan  # noqa: E731
            out[f"{topic}/{lang}"] = {
                "n": len(mine), "correct": len(right) / len(mine), "gate": mean(mine, "gate"),
                "reward_right": mean(right, "reward"), "reward_wrong": mean(wrong, "reward"),
                "raw_right": mean(right, "raw"), "raw_wrong": mean(wrong, "raw"),
                "reward_wrong_gated_in": mean([r for r in wrong if r["gate"] > 0], "reward"),
                "gate_right": mean(right, "gate"), "gate_wrong": mean(wrong, "gate"),
                "examples_right_gated_out": [(r["text"], r["pred"]) for r in right if r["gate"] == 0][:5],
                "adv_right": mean(right, "adv"), "adv_wrong": mean(wrong, "adv"),
                "p_right_beats_wrong": wins / pairs if pairs else math.nan, "mixed_groups": mixed / len(groups),
                "all_wrong_groups_with_advantages": all_wrong_signal / len(groups),
                "top_wrong_names_other_region": top_is_other_region / all_wrong_signal if all_wrong_signal else math.nan,
                "tokens": mean(mine, "tokens"), "truncated": mean(mine, "truncated"),
                "predicted": dict(sorted({str(p): sum(r["pred"] == p for r in mine) / len(mine)
                                          for p in {r["pred"] for r in mine}}.items(), key=lambda kv: -kv[1])[:3]),
                "examples_wrong_top_reward": [r["text"] for r in sorted(wrong, key=lambda r: -r["reward"])[:3]]}
    table = scorer.table
    out["calibration"] = {"mu_ref": table.mu_ref, **{
        lang: {"same_lang_mean": table.get(lang, lang).mean, "same_lang_std": table.get(lang, lang).std,
               "same_lang_hard_mean": table.get(lang, lang).hard_mean,
               "same_lang_mismatch_mean": table.get(lang, lang).mismatch_mean,
               "offset_same_lang": -(table.get(lang, lang).mean - table.mu_ref),
               "offset_from_en": -(table.get(lang, "en").mean - table.mu_ref)} for lang in LANGS}}
    out["wall_s"] = time.time() - t0
    return out


def format_diagnosis(d: dict) -> str:
    lines = [f"{'topic/lang':14s} {'n':>5s} {'right':>6s} {'gate':>5s} {'r|right':>8s} {'r|wrong':>8s} "
             f"{'s|right':>8s} {'s|wrong':>8s} {'P(r>w)':>7s} {'mixed':>6s} {'adv|R':>6s} {'tok':>5s} {'trunc':>6s} {'g|R':>5s} {'g|W':>5s} {'wrongA':>6s} {'other':>6s}  LID"]
    for k, v in d.items():
        if "/" not in k:
            continue
        lines.append(f"{k:14s} {v['n']:5d} {v['correct']:6.3f} {v['gate']:5.2f} {v['reward_right']:8.3f} "
                     f"{v['reward_wrong']:8.3f} {v['raw_right']:8.3f} {v['raw_wrong']:8.3f} "
                     f"{v['p_right_beats_wrong']:7.3f} {v['mixed_groups']:6.2f} {v['adv_right']:6.2f} "
                     f"{v['tokens']:5.1f} {v['truncated']:6.2f} {v['gate_right']:5.2f} {v['gate_wrong']:5.2f} "
                     f"{v['all_wrong_groups_with_advantages']:6.2f} {v['top_wrong_names_other_region']:6.2f}  {v['predicted']}")
    c = d["calibration"]
    lines.append(f"calibration: mu_ref {c['mu_ref']:.4f}")
    for lang in LANGS:
        x = c[lang]
        lines.append(f"  {lang}-{lang}: mean {x['same_lang_mean']:.3f} std {x['same_lang_std']:.3f} "
                     f"hard {x['same_lang_hard_mean']:.3f} mismatch {x['same_lang_mismatch_mean']:.3f} "
                     f"offset {x['offset_same_lang']:+.4f} (pair with en: {x['offset_from_en']:+.4f})")
    return "\n".join(lines)


def accuracy_by_group(model, tokenizer) -> dict:
    """Greedy accuracy on every question of the world (both splits) in its own language, by
    language and by group: regional facts taught in that language by the warm start (its local
    language or ``known_in``), regional facts not taught in it, arithmetic. Plus the held-out
    split alone (what bench/classroom.py reports, 84 per language)."""
    from calibrate import detect_languages, in_language
    known = toy.known_in(toy.WorldConfig())
    examples = toy.build_examples()
    test = {(e.id, e.lang) for e in toy.load_split("test")}
    answers = toy.greedy_answers(model, tokenizer, examples, [e.lang for e in examples], batch_size=96)
    langs = detect_languages(answers)
    out = {}
    for e, ans, lang in zip(examples, answers, langs):
        group = e.topic if e.topic == "arithmetic" else "taught" if known[e.id, e.lang] else "not-taught"
        for g in (group, "held-out") if (e.id, e.lang) in test else (group,):
            cell = out.setdefault(e.lang, {}).setdefault(g, [0, 0, 0])
            cell[0] += toy.is_correct(e, ans)
            cell[1] += in_language(lang, e.lang)
            cell[2] += 1
    return {lang: {g: {"accuracy": c[0] / c[2], "in_language": c[1] / c[2], "n": c[2]} for g, c in groups.items()}
            for lang, groups in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4],
        help="seeds of every training language")
    p.add_argument("--langs", default=",".join(LANGS), help="training languages A (comma-separated)")
    p.add_argument("--variant", default="direct", choices=("direct", "routed"),
        help="direct: facts taught asked, tagged and answered in A; routed: asked in another "
             "language X, answered in A (what a routed rollout teaches)")
    p.add_argument("--steps", type=int, default=60, help="SFT steps")
    p.add_argument("--lr", type=float, default=1e-3, help="SFT learning rate")
    p.add_argument("--world", default="current", choices=("current", "famous"),
                   help="the current world or a candidate world patched in for the probe (use_world)")
    p.add_argument("--replay", type=int, default=0,
                   help="warm-start rows added to every SFT step (0: none): less forgetting of the control facts")
    p.add_argument("--rl", default=None, choices=("similarity", "oracle"),
                   help="train with lrpo.policy_update (GRPO in A) and this reward instead of SFT")
    p.add_argument("--rl-steps", type=int, default=30, help="training steps of --rl")
    p.add_argument("--rl-lr", type=float, default=1e-4, help="learning rate of --rl")
    p.add_argument("--group", type=int, default=8, help="RL rollouts per question")
    p.add_argument("--out", default=None, help="also write the JSON result here")
    p.add_argument("--eval-checkpoint", nargs="+", default=None, metavar="DIR",
                   help="instead of the probe: accuracy by language and group of the warm start and of these "
                        "trained checkpoints (e.g. runs/X/checkpoint)")
    p.add_argument("--diagnose-reward", action="store_true",
                   help="instead of the probe: the reward of right vs wrong own-language rollouts per language")
    args = p.parse_args()
    use_world(args.world)
    if args.eval_checkpoint:
        from transformers import AutoModelForCausalLM
        torch.set_num_threads(1)
        base, tokenizer = toy.load_model_and_tokenizer()
        res = {"warm start": accuracy_by_group(base, tokenizer)}
        for path in args.eval_checkpoint:
            res[path] = accuracy_by_group(AutoModelForCausalLM.from_pretrained(path).eval(), tokenizer)
        for name, table in res.items():
            print(f"\n{name}")
            for g in ("taught", "not-taught", "arithmetic", "held-out"):
                print(f"  {g:11s} " + " ".join(f"{l}:{table[l][g]['accuracy']:.3f}" for l in LANGS)
                      + "   in-lang " + " ".join(f"{table[l][g]['in_language']:.2f}" for l in LANGS))
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1))
        return
    if args.diagnose_reward:
        d = diagnose_reward(args.group, args.seeds[0])
        print(format_diagnosis(d))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(d, indent=1, ensure_ascii=False))
        print(json.dumps({k: {"right": round(v["correct"], 3), "P(r>w)": round(v["p_right_beats_wrong"], 3)}
                          for k, v in d.items() if "/" in k}))
        return
    res = run_probe(args.seeds, args.langs.split(","), args.variant, args.steps, args.lr, args.rl,
                    args.rl_steps, args.rl_lr, args.group, args.replay)
    print(format_result(res))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps({"variant": res["variant"], "rl": res["rl"], "replay": res["replay"], "wall_s": round(res["wall_s"], 1),
                      **{f"mean_offdiag_ratio/{k}": round(v["mean_offdiag_ratio"], 4) for k, v in res["pooled"].items()},
                      **{f"ratio_of_means/{k}": round(v["ratio_of_means"], 4) for k, v in res["pooled"].items()}}))


if __name__ == "__main__":
    from extras.interrupt import main_with_one_line_ctrl_c
    main_with_one_line_ctrl_c(main, "transfer_probe")
