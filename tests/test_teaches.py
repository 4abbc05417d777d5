"""The built-in world teaches (issue 31): a few LRPO steps with the paper's reward (calibrated
similarity, gated by language ID) raise the policy's belief in the *right* fact, in the question's
own language, where the language gate cannot tell right from wrong.

The measure, for a regional question x asked in ℓ_x: the policy's share of the right answer among
the world's possible ones, p(right sentence) / Σ_v p(the same sentence with value v), over every
region's value of that attribute, each sentence in ℓ_x and tagged ℓ_x. All candidates are in the
same language and the same template, so they pass the gate alike and only correctness separates
them. Version 3 of the world raised its training reward through the gate alone while held-out
accuracy fell (0.260 → 0.187); this test fails if the reward stops teaching facts.

The steps are the toy preset's (lr 1e-4, K = 8, KL 0.001) on 8 questions, every step the same 8,
so that 12 steps (under a minute on a CPU) are 12 updates per question (the default run gives
each training question about 5). Measured 2026-12-08 on the project's CPU: mean share 0.329 → 0.47
after 8 steps and → 0.52 after 16, up on 6 and 7 of the 8 questions; with lr 1e-3 instead, facts
flip both ways (0.96 → 0.01, 0.11 → 0.99) and the mean falls (0.33 → 0.31).
"""
import random

import torch

import lrpo
import toy
from data import build_prompt

QUESTIONS = 8   # regional questions not in their region's language, trained on every step
STEPS = 12


def candidates(example) -> list[str]:
    """The example's answer sentence with every region's value of its attribute (the right one first)."""
    region = next(r for r in toy.REGIONS if r.name == example.region[0])
    attribute = example.id.split("-", 1)[1]
    values = [getattr(r, attribute) for r in toy.REGIONS if r is not region]
    return [example.answer] + [toy.FACT_TEMPLATES[attribute][example.lang][1].format(r=region.name, v=v)
                               for v in values]


@torch.no_grad()
def right_share(model, tokenizer, example) -> float:
    """p(right answer) / Σ p(candidate answer), each answer + EOS after the question tagged ℓ_x."""
    prompt = tokenizer(build_prompt(tokenizer, example.question, example.lang),
                       add_special_tokens=False)["input_ids"]
    scores = []
    for answer in candidates(example):
        target = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        logits = model(input_ids=torch.tensor([prompt + target])).logits[0, len(prompt) - 1:-1]
        logp = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(target)[:, None])
        scores.append(logp.sum())
    return float(torch.softmax(torch.stack(scores), 0)[0])


def test_a_few_steps_teach_the_right_fact_not_only_the_language(tmp_path, toy_model_and_tokenizer):
    cfg = lrpo.parse_args(["--out", str(tmp_path / "run"), "--steps", str(STEPS), "--eval-size", "0",
                           "--questions-per-step", str(QUESTIONS), "--max-new-tokens", "24",
                           "--save-every", "0", "--no-progress"])
    run = lrpo.set_up(cfg)
    pool = [e for e in run.train if toy.question_group(e) == "regional/other-q"
            and not e.id.endswith("festival")]   # 24 distinct values per attribute
    run.train = random.Random(0).sample(pool, QUESTIONS)   # one step covers them all
    before = [right_share(run.model, run.tokenizer, q) for q in run.train]
    steps = [lrpo.train_step(run, step)[0] for step in range(STEPS)]
    after = [right_share(run.model, run.tokenizer, q) for q in run.train]
    print("right-answer share before", [round(b, 3) for b in before], "after", [round(a, 3) for a in after])
    assert all(s["train/skipped_steps"] == 0 for s in steps)
    # the right fact gains, on average and on most questions
    assert sum(after) / QUESTIONS > sum(before) / QUESTIONS + 0.05
    assert sum(a > b for a, b in zip(after, before)) >= 5
