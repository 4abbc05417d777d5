"""The wires of one training step (lrpo.train_step, paper Alg. 2), asserted on real CPU steps of
the built-in world's model: what the router learns from, which rollouts form a group, the
advantages for both normalisations, and which rows the loss sees. Each stage runs the production
code; `wiring.Tap` only records what one stage hands the next, and each test compares that with
a value computed here from the stages' own outputs (issue 33)."""
from collections import Counter

import pytest
import torch

import lrpo
from wiring import Tap, base_run, fresh, restated_advantages, row_key, TAG


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory, toy_model_and_tokenizer):
    return base_run(tmp_path_factory.mktemp("wiring") / "run")


def question_of(prompt: str) -> str:
    """The question text of a tag-style prompt (the user turn before the language tag)."""
    return prompt.split("<|im_start|>user\n", 1)[1].split("\n<|out_lang_", 1)[0]


@pytest.mark.parametrize("std_norm", [True, False])
def test_one_step_wires_router_groups_advantages_and_loss(base, monkeypatch, std_norm):
    """On real steps of 4 questions x 4 rollouts, two of the questions translations of one item:
    * the router's observe is called once per step, with the topics, regions and languages of
      exactly the rows it allocated (the language tag of each prompt the sampler got) and exactly
      the scorer's gated rewards of those rows, in order;
    * the update gets the sampler's own Rollout, and advantages equal to GRPO's formula over
      each question's K rollouts (not over an item's translations together), with or without
      the division by the group std (--no-std-norm);
    * the loss sees every sampled row once, with that row's advantage, log-probs equal to the
      sampler's (the same policy, the same temperature) and weights > 0 exactly on its answer.
    Steps run until one is discriminating (a gated-out rollout, so the reward differs from the
    similarity and the gate; a group whose std is not 1), at most 6."""
    run = fresh(base, std_norm=std_norm)
    K, B = run.cfg.group_size, run.cfg.questions_per_step
    assert len({ex.id for ex in run.train}) < len(run.train)   # translations of one item meet
    tap = Tap(run, monkeypatch)
    discriminating = False
    for step in range(6):
        tap.reset()
        lrpo.train_step(run, step)
        (alloc,), (sampled,), (scored,), (observed,), (update,) = (
            tap.allocations, tap.samples, tap.scores, tap.observed, tap.updates)
        questions, langs_per_q = alloc.args[0], alloc.out
        prompts, roll, result = sampled.args[2], sampled.out, scored.out
        assert len(questions) == B and all(len(langs) == K for langs in langs_per_q)
        rows = [(q, lang) for q, langs in zip(questions, langs_per_q) for lang in langs]
        assert [TAG.search(p).group(1) for p in prompts] == [lang for _, lang in rows]
        assert [question_of(p) for p in prompts] == [q.question.strip() for q, _ in rows]
        assert scored.args[0] == roll.texts   # the scorer reads the sampled texts
        # the router: once, the allocated rows, the gated rewards
        topics, regions, langs, rewards = observed.args
        assert topics == [q.topic for q, _ in rows] and regions == [q.region for q, _ in rows]
        assert langs == [lang for _, lang in rows]
        assert list(rewards) == result.reward.tolist()
        assert torch.allclose(torch.tensor(result.reward), torch.tensor(result.gate * result.calibrated_similarity))
        # the update: the sampler's rollout, GRPO's advantages over each question's K rollouts
        got_roll, advantages = update.args[1], update.args[2]
        assert got_roll is roll
        expected = restated_advantages(result.reward, K, std_norm)
        # float32 against float64: (r − mean) of rewards near 1 carries ~1e-7, divided by a
        # group std that can be ~1e-2, so ~1e-5; a wrong wire moves advantages by ~0.1 or more
        torch.testing.assert_close(advantages.double(), expected, atol=1e-4, rtol=1e-4)
        # the loss: every sampled row once, with its advantage, its log-probs, its answer's tokens
        start = roll.completion_start
        want = Counter((row_key(roll.input_ids[i], roll.attention_mask[i], start), round(float(advantages[i]), 5))
                       for i in range(len(rows)))
        logp_of = {row_key(roll.input_ids[i], roll.attention_mask[i], start): roll.logprobs[i]
                   for i in range(len(rows))}
        seen = Counter()
        training = tap.training_forwards()
        assert len(training) == len(tap.losses) >= 1
        total_weight = 0.0
        for fwd, call in zip(training, tap.losses):
            for j in range(fwd.ids.shape[0]):
                key = row_key(fwd.ids[j], fwd.mask[j], fwd.start)
                seen[(key, round(float(call.advantages[j]), 5))] += 1
                n = len(key[1])
                assert (call.weights[j] > 0).tolist() == [True] * n + [False] * (call.weights.shape[1] - n)
                torch.testing.assert_close(call.logp[j, :n], logp_of[key][:n], atol=2e-4, rtol=0)
            total_weight += float(call.weights.sum())
        assert seen == want
        assert total_weight == pytest.approx(1.0)   # token-mean: the step's loss is one mean
        gated_out = (result.gate == 0) & (result.calibrated_similarity > 0)
        stds = [float(torch.tensor(result.reward[g:g + K]).std()) for g in range(0, len(rows), K)]
        if gated_out.any() and any(abs(s - 1) > 0.01 and s > 0 for s in stds):
            discriminating = True
            break
    assert discriminating, "no step had a gated-out rollout: the reward was not told apart from the similarity"


class GradRecorder:
    """An optimizer that only keeps the gradient it is asked to step with."""

    def __init__(self, model):
        self.params = list(model.parameters())
        self.param_groups = [{"params": self.params}]
        self.grads = []

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None

    def step(self):
        self.grads.append(torch.cat([p.grad.flatten() for p in self.params]))


def mini_batch_gradient(run, roll, advantages, rows):
    """The on-policy gradient of one mini-batch alone: lrpo.policy_update (the core's one-step
    update, checked against verl's loop in test_lrpo.py) on those rows."""
    import dataclasses
    from types import SimpleNamespace
    import rollout
    from extras.divergence import Guard
    cfg = dataclasses.replace(run.cfg, mini_batch=None, ppo_epochs=1)
    recorder = GradRecorder(run.model)
    core = SimpleNamespace(cfg=cfg, model=run.model, reference=run.reference, optimizer=recorder,
                           logprobs=rollout.token_logprobs, guard=Guard())
    lrpo.policy_update(core, roll, advantages, rows, 0)
    return recorder.grads[0]


@pytest.mark.parametrize("mini_batch,ppo_epochs", [(8, 1), (None, 2), (8, 2), (None, 1)])
def test_mini_batches_and_ppo_epochs(base, monkeypatch, mini_batch, ppo_epochs):
    """--mini-batch and --ppo-epochs (extras/fast_training.policy_update):
    * one optimizer step per mini-batch per epoch, each with that mini-batch's own gradient (the
      gradients are zeroed before each mini-batch, not once per epoch or per step): at lr 0 the
      weights stay put, so mini-batch m's gradient is lrpo.policy_update's on its rows alone;
    * off-policy (several mini-batches, or several epochs) the loss gets the old log-probs, those
      of the policy before the update (= the sampler's), in every mini-batch, and the ratio moves
      after the first optimizer step; on-policy (one of each) it gets none (ρ ≡ 1)."""
    n = 16
    mini = mini_batch or n
    off_policy = mini < n or ppo_epochs > 1
    run = fresh(base, lr=0.0, grad_clip=1e9, mini_batch=mini_batch, ppo_epochs=ppo_epochs)
    tap = Tap(run, monkeypatch)
    lrpo.train_step(run, 0)
    (update,) = tap.updates
    roll, advantages, order = update.args[1], update.args[2], update.args[3]
    assert len(tap.steps) == ppo_epochs * (n // mini)
    fresh(base)   # the initial weights again, for the independent gradients
    for k, recorded in enumerate(tap.steps):
        rows = order[(k % (n // mini)) * mini:][:mini]
        expected = mini_batch_gradient(run, roll, advantages, rows)
        got = torch.cat([g.flatten() for g in recorded])
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7, msg=f"optimizer step {k}")
    # at lr 1e-3 the weights move: the old log-probs stay those of the policy that sampled
    run = fresh(base, lr=1e-3, mini_batch=mini_batch, ppo_epochs=ppo_epochs)
    tap = Tap(run, monkeypatch)
    lrpo.train_step(run, 0)
    roll = tap.updates[0].args[1]
    sampled = {row_key(roll.input_ids[i], roll.attention_mask[i], roll.completion_start): roll.logprobs[i]
               for i in range(n)}
    moved = False
    for fwd, call in zip(tap.training_forwards(), tap.losses):
        assert (call.old_logp is not None) == off_policy
        if not off_policy:
            continue
        for j in range(fwd.ids.shape[0]):
            key = row_key(fwd.ids[j], fwd.mask[j], fwd.start)
            t = len(key[1])
            torch.testing.assert_close(call.old_logp[j, :t], sampled[key][:t], atol=2e-4, rtol=0)
            moved |= float((call.logp[j, :t] - call.old_logp[j, :t]).abs().max()) > 1e-3
    assert moved == off_policy
