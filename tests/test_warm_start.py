"""extras/warm_start.py: teacher pairs (local fake endpoint), SFT that lowers the loss and saves a
loadable model, and the tag-following check the training loop runs before a real run."""
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer


import data
from extras import warm_start

EXAMPLES = [data.Example(f"q{i}", f"Question {i}?", "A.", "en", "general") for i in range(5)]


def test_build_pairs_asks_in_each_target_language_and_drops_wrong_language_answers():
    asked = []
    def ask(messages):   # a teacher that answers German prompts in English (a failure to drop)
        system = messages[0]["content"]
        asked.append(system)
        return "Bonjour, la réponse est A." if "français" in system else "Hello, the answer is A."
    detect = lambda texts: ["fr" if t.startswith("Bonjour") else "en" for t in texts]
    pairs, dropped = warm_start.build_pairs(EXAMPLES, ask, ["fr", "de"], n_prompts=3, seed=1, detect=detect)
    assert len(asked) == 6                                 # 3 prompts × 2 target languages
    assert len(pairs) == 3 and dropped == 3                # every German answer was English
    assert all(p["target_lang"] == "fr" for p in pairs)
    assert all(data.ZERO_SYSTEM_PROMPTS[lang] in asked for lang in ("fr", "de"))


def test_http_teacher_talks_openai_chat_completions():
    seen = []
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, body, self.headers.get("Authorization")))
            reply = json.dumps({"choices": [{"message": {"content": "Hallo!"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(reply)
        def log_message(self, *args):
            pass
    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    ask = warm_start.http_teacher(f"http://127.0.0.1:{server.server_port}/v1", "teacher", api_key="k")
    assert ask([{"role": "user", "content": "Hi"}]) == "Hallo!"
    thread.join(5)
    server.server_close()
    path, body, auth = seen[0]
    assert path == "/v1/chat/completions" and body["model"] == "teacher" and auth == "Bearer k"


def test_plain_http_key_warning(capsys):
    warm_start.http_teacher("http://example.org/v1", "t", api_key="secret")
    assert "plain http to http://example.org/v1" in capsys.readouterr().err
    warm_start.http_teacher("http://127.0.0.1:9/v1", "t", api_key="secret")
    assert capsys.readouterr().err == ""


def test_sft_lowers_the_loss_and_saves_a_loadable_model(tmp_path, tiny_qwen):
    import torch
    from extras.models import load_model
    model, tok = tiny_qwen
    pairs = [{"question": f"Wie viel ist {i} plus {i}?", "target_lang": "fr",
              "response": f"{i} plus {i} font {2 * i}."} for i in range(8)]
    losses = warm_start.sft(model, tok, pairs, epochs=6, lr=3e-3, batch_size=4, log=lambda *a: None)
    assert sum(losses[-2:]) / 2 < 0.7 * sum(losses[:2]) / 2
    model.save_pretrained(tmp_path / "ws")
    tok.save_pretrained(tmp_path / "ws")
    loaded, _ = load_model(str(tmp_path / "ws"), "cpu")
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_tag_following_of_the_warm_started_toy_model(toy_model_and_tokenizer):
    """The built-in warm start teaches the tag (README: answers in the requested language in
    every held-out cell but one), so routed prompts are mostly answered in the tagged language;
    the untrained tiny_qwen would score about 0."""
    import toy
    model, tok = toy_model_and_tokenizer
    share = warm_start.tag_following(model, tok, toy.load_split("test"), list(toy.LANGS), n=24)
    assert share >= 0.75


def test_tag_following_of_an_untrained_model_is_low(tiny_qwen):
    import toy
    model, tok = tiny_qwen
    assert warm_start.tag_following(model, tok, toy.load_split("test"), list(toy.LANGS), n=12) <= 0.1


def test_tag_following_counts_the_answers_in_the_tagged_language(tiny_qwen, monkeypatch):
    """Answers that follow the tag in every prompt, or in every other one: 1 and 1/2 exactly (a
    tag_following that always returned 0 would pass the test above)."""
    import re
    import calibrate
    import toy
    from extras import fast_rollout
    model, tok = tiny_qwen
    monkeypatch.setattr(fast_rollout, "generate", lambda m, t, prompts, n: list(prompts))
    tagged = lambda texts: [re.search(r"<\|out_lang_(\w+)\|>", t).group(1) for t in texts]
    monkeypatch.setattr(calibrate, "detect_languages", tagged)
    examples, langs = toy.load_split("test"), list(toy.LANGS)
    assert warm_start.tag_following(model, tok, examples, langs, n=12) == 1.0
    monkeypatch.setattr(calibrate, "detect_languages", lambda texts: [
        code if i % 2 else "xx" for i, code in enumerate(tagged(texts))])
    assert warm_start.tag_following(model, tok, examples, langs, n=12) == 0.5
