"""extras/label.py: the paper's labelling prompts, strict parsing, cache and resume, both backends."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import data
from extras import recipes
from extras import label

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures" / "data"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ----------------------------------------------------------------------------------------------
# Prompts and parsing

def test_prompts_are_the_papers_figures():
    for topic in data.TOPICS:
        assert f"* [[{topic}]] | " in label.TOPIC_PROMPT
    assert label.TOPIC_PROMPT.startswith("You are a classification model that assigns EXACTLY ONE topic label")
    assert label.TOPIC_PROMPT.endswith("Input Query:\n{question}\n\nOutput:")
    assert label.REGION_PROMPT.startswith("You are a classifier that determines which REGION or CULTURE")
    assert "output [[France]] [[Germany]] instead of [[Europe]]." in label.REGION_PROMPT
    assert label.REGION_PROMPT.endswith("Input Query:\n{question}")
    assert label.PROMPT_VERSION.startswith("A.2-")
    assert set(label.REGION_ALIASES.values()) <= set(data.REGIONS)


@pytest.mark.parametrize("reply, topic", [
    ("[[Regional Knowledge]]", "Regional Knowledge"),
    ("  [[chat / conversational]]\n", "Chat / Conversational"),
    ("[[ Reasoning  /  Logic ]]", "Reasoning / Logic"),
    ("<think>It asks for a translation.</think>\n[[Translation]]", "Translation"),
])
def test_parse_topic(reply, topic):
    assert label.parse_topic(reply) == topic


@pytest.mark.parametrize("reply", [None, "", "General Knowledge", "[[General]]", "[[Math]]",
                                   "[[General Knowledge]] because it is factual",
                                   "Output:\n[[General Knowledge]]", "[[Translation]] [[Chat / Conversational]]"])
def test_parse_topic_is_strict(reply):
    with pytest.raises(label.Unparseable):
        label.parse_topic(reply)


def test_parse_regions_and_keys():
    assert label.parse_regions("[[France]] [[Germany]]") == ["France", "Germany"]
    assert label.parse_regions("[[China]]\n[[Japan]]") == ["China", "Japan"]
    assert label.region_keys(["United States", "korea", "France", "Brazil", "Atlantis", "the USA"]) == (
        ["Anglosphere", "South Korea", "France", "Latin America"], ["Atlantis"])
    for reply in ("France", "[[France]], [[Germany]]", "[[France]] and [[Germany]]", "[[]]", ""):
        with pytest.raises(label.Unparseable):
            label.parse_regions(reply)


def test_plain_http_warning(capsys):
    assert label.warn_plain_http("http://labeller.example.com/v1", "secret")
    assert "plain http to labeller.example.com" in capsys.readouterr().err
    assert not label.warn_plain_http("https://labeller.example.com/v1", "secret")
    assert not label.warn_plain_http("http://127.0.0.1:8000/v1", "secret")
    assert not label.warn_plain_http("http://localhost:8000/v1", "secret")
    assert not label.warn_plain_http("http://labeller.example.com/v1", None)
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------------------------
# A fake OpenAI-compatible endpoint on 127.0.0.1

class FakeAPI:
    """Answers /v1/chat/completions from ``script[(kind, question)]``: a list of replies, the
    n-th request gets the n-th (the last repeats); kind is "topic" or "region"."""
    LIMIT = 200

    def __init__(self, script, status=200):
        self.script, self.status, self.requests, self.headers = script, status, [], []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][0]["content"]
                kind = "topic" if prompt.startswith("You are a classification model") else "region"
                question = prompt.rsplit("Input Query:\n", 1)[-1].removesuffix("\n\nOutput:")
                api.requests.append((kind, question, body["temperature"]))
                api.headers.append(dict(self.headers))
                n = sum(1 for k, q, _ in api.requests if (k, q) == (kind, question))
                replies = api.script.get((kind, question), ["(no script)"])
                reply = replies[min(n, len(replies)) - 1]
                status = api.status if len(api.requests) <= api.LIMIT else 500
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}
                                     if status == 200 else {"error": "nope"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_api():
    servers = []

    def make(script, status=200):
        servers.append(FakeAPI(script, status))
        return servers[-1]
    yield make
    for s in servers:
        s.close()


QUESTIONS = {
    "小粉红是什么？": (["[[Regional Knowledge]]"], ["[[China]]"]),
    "How do weddings differ between Korea and the United States?": (["[[Regional Knowledge]]"], ["[[Korea]] [[United States]]"]),
    "What is photosynthesis?": (["I think [[General Knowledge]]", "[[General Knowledge]]"], []),   # retried, then parsed
    "Bonjour, ça va ?": (["Chat!", "Hello"], []),                                                # unparseable twice
    "Wo liegt Atlantis?": (["[[Regional Knowledge]]"], ["[[Atlantis]]"]),                        # no official key
    "Translate 'merci' into English": (["[[Translation]]"], []),
}


def unlabelled_file(tmp_path):
    rows = [{"id": i, "question": q, "answer": "a", "lang": "en", "extra": i}
            for i, q in enumerate(QUESTIONS)]
    rows.append({"id": 99, "question": "小粉红是什么？", "answer": "b", "lang": "zh"})   # a repeat: asked once
    return write_jsonl(tmp_path / "train.jsonl", rows)


def script_of(questions):
    return {**{("topic", q): t for q, (t, _) in questions.items()},
            **{("region", q): r for q, (_, r) in questions.items() if r}}


def test_label_through_an_openai_compatible_endpoint(tmp_path, fake_api, monkeypatch, capsys):
    api = fake_api(script_of(QUESTIONS))
    monkeypatch.setenv("LABEL_TEST_KEY", "secret")
    out = tmp_path / "train.labelled.jsonl"
    args = ["--in", str(unlabelled_file(tmp_path)), "--out", str(out), "--url", api.url,
            "--name", "gpt-oss-120b", "--api-key-env", "LABEL_TEST_KEY", "--batch-size", "4", "--workers", "2"]
    assert label.main(args) == 0
    assert api.headers[0]["Authorization"] == "Bearer secret"
    assert "warning" not in capsys.readouterr().err                      # 127.0.0.1: no warning
    # 6 distinct questions: 6 topic requests + 2 retries; 3 regional ones: 3 region requests
    assert len(api.requests) == 11
    assert [t for k, q, t in api.requests if q == "What is photosynthesis?"] == [0.0, label.RETRY_TEMPERATURE]

    rows = {r["question"]: r for r in read_jsonl(out)}
    assert len(read_jsonl(out)) == 7 and rows["What is photosynthesis?"]["extra"] == 2   # rows kept whole
    assert (rows["小粉红是什么？"]["topic"], rows["小粉红是什么？"]["region"]) == ("Regional Knowledge", ["China"])
    wedding = rows["How do weddings differ between Korea and the United States?"]
    assert wedding["region"] == ["South Korea", "Anglosphere"]
    assert (rows["What is photosynthesis?"]["topic"], rows["What is photosynthesis?"]["region"]) == ("General Knowledge", None)
    assert "topic" not in rows["Bonjour, ça va ?"]                     # unlabelled: the row is left as it was
    assert (rows["Wo liegt Atlantis?"]["topic"], rows["Wo liegt Atlantis?"]["region"]) == ("Regional Knowledge", None)

    cache = {r["question"]: r for r in read_jsonl(tmp_path / "train.labelled.jsonl.cache.jsonl")}
    assert len(cache) == 6
    assert cache["Bonjour, ça va ?"]["status"] == "topic unparseable"
    assert cache["Bonjour, ça va ?"]["replies"]["topic"] == ["Chat!", "Hello"]    # raw replies kept
    assert (cache["Wo liegt Atlantis?"]["status"], cache["Wo liegt Atlantis?"]["unmapped"]) == ("region unmapped", ["Atlantis"])
    assert cache["小粉红是什么？"]["labeller"] == "gpt-oss-120b"

    # the output trains: labelled topics and regions, the unlabelled row is "general"
    examples = recipes.load_examples(str(out))
    assert sorted(e.topic for e in examples).count("general") == 1
    assert "1 regional questions have no region" in recipes.describe_labels(examples)

    # a rerun asks nothing; --retry-unlabelled asks again only about the two failures
    before = len(api.requests)
    assert label.main(args) == 0 and len(api.requests) == before
    assert "0 asked now" in capsys.readouterr().out
    assert label.main(args + ["--retry-unlabelled"]) == 0
    assert {q for _, q, _ in api.requests[before:]} == {"Bonjour, ça va ?", "Wo liegt Atlantis?"}


def test_label_verl_parquet_keeps_the_schema(tmp_path, fake_api):
    script = {("topic", "小粉红是什么？"): ["[[Regional Knowledge]]"], ("region", "小粉红是什么？"): ["[[China]] [[Japan]]"]}
    api = fake_api(script)
    src, out = FIXTURES / "official_verl.parquet", tmp_path / "train.parquet"
    # already labelled rows are not asked about ...
    assert label.main(["--in", str(src), "--out", str(out), "--url", api.url, "--name", "m"]) == 0
    assert api.requests == []
    # ... unless --relabel; the labels go where verl keeps them (ability, extra_info.topic/region)
    assert label.main(["--in", str(src), "--out", str(out), "--url", api.url, "--name", "m", "--relabel"]) == 0
    import pyarrow.parquet as pq
    first = pq.read_table(out).to_pylist()[0]
    assert first["ability"] == first["extra_info"]["topic"] == "Regional Knowledge"
    assert first["extra_info"]["region"] == ["China", "Japan"]
    assert first["reward_model"]["ground_truth"].startswith("“小粉红”")
    assert recipes.load_examples(str(out))[0].region == ("China", "Japan")


def test_labelled_helpsteer3_rows_feed_the_recipe(tmp_path, fake_api):
    q = "Pourquoi mange-t-on des crêpes à la Chandeleur ?"
    api = fake_api({("topic", "北京有什么好吃的？"): ["[[Regional Knowledge]]"], ("region", "北京有什么好吃的？"): ["[[China]]"]})
    out = tmp_path / "hs.jsonl"
    assert label.main(["--in", str(FIXTURES / "helpsteer3.jsonl"), "--out", str(out), "--url", api.url, "--name", "m"]) == 0
    assert [q2 for _, q2, _ in api.requests] == ["北京有什么好吃的？", "北京有什么好吃的？"]   # the French row was labelled
    rows = read_jsonl(out)
    assert len(rows) == 2                                   # rows the recipe skips are left out
    zh, fr = recipes.load_examples(str(out))
    assert (zh.topic, zh.region, fr.question) == ("Regional Knowledge", ("China",), q)


def scripted_reply(prompt):
    """The last scripted reply for a prompt's question (the fake labeller's answer)."""
    question = prompt.rsplit("Input Query:\n", 1)[-1].removesuffix("\n\nOutput:")
    topic_replies, region_replies = QUESTIONS[question]
    return topic_replies[-1] if prompt.startswith("You are a classification") else region_replies[-1]


def test_interrupted_run_loses_nothing(tmp_path):
    src = unlabelled_file(tmp_path)
    out, cache = tmp_path / "out.jsonl", tmp_path / "cache.jsonl"

    def interrupted(prompts, temperature):   # Ctrl-C during the second batch
        if any(p.endswith("What is photosynthesis?\n\nOutput:") for p in prompts):
            raise KeyboardInterrupt
        return [scripted_reply(p) for p in prompts]

    with pytest.raises(KeyboardInterrupt):
        label.label_file(recipes.open_source(str(src)), out, lambda: interrupted, cache, batch_size=2)
    assert not out.exists() and len(read_jsonl(cache)) == 2          # the first batch is saved
    with cache.open("a") as f:
        f.write('{"key": "cut sh')                                      # a write cut short
    asked = []

    def ask(prompts, temperature):
        asked.extend(p for p in prompts if p.startswith("You are a classification"))
        return [scripted_reply(p) for p in prompts]

    stats = label.label_file(recipes.open_source(str(src)), out, lambda: ask, cache, batch_size=2)
    assert stats["asked"] == 4 and len(asked) == 4 + 1                  # the 4 others (one retried)
    assert len(label.read_cache(cache)) == 6 and len(read_jsonl(out)) == 7
    lines = cache.read_text(encoding="utf-8").splitlines()
    assert lines[2] == '{"key": "cut sh' and len([json.loads(x) for x in lines[3:]]) == 4   # on new lines


def test_endpoint_errors_are_bounded_and_named(tmp_path, fake_api, capsys):
    api = fake_api({}, status=503)
    ask = label.http_labeller(api.url, "m", attempts=2, backoff=0.0)
    with pytest.raises(label.LabelError, match=r"chat/completions \(model 'm'\): HTTP 503"):
        ask(["x"], 0.0)
    assert len(api.requests) == 2
    bad = fake_api({}, status=401)
    src = write_jsonl(tmp_path / "t.jsonl", [{"question": "Q", "answer": "A", "lang": "en"}])
    assert label.main(["--in", str(src), "--out", str(tmp_path / "o.jsonl"), "--url", bad.url, "--name", "m"]) == 2
    assert "HTTP 401" in capsys.readouterr().err and len(bad.requests) == 1


# ----------------------------------------------------------------------------------------------
# A tiny local transformers model: garbage replies, so the unparseable path and the cache

def test_local_model_garbage_is_recorded_unlabelled_and_cached(tmp_path, tiny_qwen, monkeypatch, capsys):
    model, tok = tiny_qwen
    model_dir = tmp_path / "tiny"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    src = write_jsonl(tmp_path / "t.jsonl", [{"question": "Hola, ¿qué tal?", "answer": "Bien.", "lang": "es"},
                                             {"question": "2+2?", "answer": "4", "lang": "en"}])
    out = tmp_path / "o.jsonl"
    args = ["--in", str(src), "--out", str(out), "--model", str(model_dir), "--max-tokens", "3", "--device", "cpu"]
    assert label.main(args) == 0
    cache = read_jsonl(tmp_path / "o.jsonl.cache.jsonl")
    assert [r["status"] for r in cache] == ["topic unparseable"] * 2
    assert all(len(r["replies"]["topic"]) == 2 for r in cache)       # asked, retried, kept raw
    assert all(r["labeller"] == str(model_dir) for r in cache)
    assert [r.get("topic") for r in read_jsonl(out)] == [None, None]
    assert "0 labelled, 2 unlabelled" in capsys.readouterr().out
    # a rerun is served from the cache: the model is not even loaded
    monkeypatch.setattr(label, "local_labeller", lambda *a, **k: pytest.fail("model loaded on a cached rerun"))
    assert label.main(args) == 0
    assert len(read_jsonl(tmp_path / "o.jsonl.cache.jsonl")) == 2
