"""Topic and region labels for the router: the paper's two labelling prompts (App. A.2, Figs. 5–6).

LRPO's router conditions on a question's topic t(x) (table A of Eq. 1) and, for regional
questions, its region(s) g(x) (table B). The paper labels its training data with two prompts to
gpt-oss-120b (98% agreement with native annotators on 200 samples, §4.2): the first assigns
one of six topics, the second, for "Regional Knowledge" questions, the country- or culture-level
region(s). This command does the same for any data file, with a local ``transformers`` model or
an OpenAI-compatible endpoint (vLLM, SGLang, a hosted API)::

    python -m extras.label --in train.jsonl --out train.labelled.jsonl --url http://localhost:8000/v1 --name openai/gpt-oss-120b
    python -m extras.label --in helpsteer3 --out helpsteer3.labelled.jsonl --model Qwen/Qwen2.5-7B-Instruct
    python lrpo.py --model ... --data helpsteer3.labelled.jsonl

The output holds the input's rows (rows that a recipe skips are left out) with the labels where
that schema keeps them: ``topic`` and ``region`` (this project's columns, the official source
JSON, labelled raw HelpSteer3 rows), or ``ability`` and ``extra_info.region`` (the official verl
parquet, also ``extra_info.topic``). Topics and regions are the official code's keys
(``data.TOPICS``, ``data.REGIONS``); a region is a list, as the official code accepts.

* **Prompts.** Figs. 5 and 6 verbatim (text, blank lines and indents as the PDF renders them),
  the question in place of ``{question}``; the region prompt only for "Regional Knowledge"
  questions, as App. A.2 says. Filled in where the paper says nothing: each prompt is sent as
  one user turn, greedy; the line break inside Fig. 5's first bullet is read as the figure's
  wrapping; Fig. 6 ends at the query with no "Output:" line, and is kept so.
* **Regions to keys.** Fig. 6 asks for countries or cultures ("Korea", "United States", and not
  "Europe"), while the official router has 24 keys, some of them groups ("Anglosphere",
  "Europe", "Latin America"). How the paper mapped one to the other is not released;
  :data:`REGION_ALIASES` is ours: a region that is a key is kept, a country in the table goes
  to its group, any other name is recorded as unmapped (never guessed) and left out.
* **Reasoning models.** Serve them behind ``--url`` (vLLM returns gpt-oss's final answer apart
  from its reasoning) and leave room in ``--max-tokens``: a reply cut short is unparseable.
* **Strict parsing.** A topic reply must be exactly ``[[<one of the six labels>]]`` (case and
  surrounding whitespace aside; a leading ``<think>...</think>`` block is dropped); a region
  reply one or more ``[[...]]`` labels and nothing else. An unparseable reply is asked once
  more (sampled at temperature 0.7), then recorded as unlabelled with the raw replies kept.
* **Cache and resume.** Every labelled question is appended to a JSONL cache (default
  ``<out>.cache.jsonl``) keyed by a hash of the question and the prompt version, and flushed
  batch by batch, so an interrupted run loses nothing: rerun the same command and it asks only
  about questions not in the cache. Rows whose input already carries a paper topic (and, if
  regional, a region) are not asked about unless ``--relabel``; cached failures are asked
  again only with ``--retry-unlabelled``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import data
from extras import endpoints, recipes, runlog
from data import DataError, REGIONS, TOPICS

REGIONAL = "Regional Knowledge"

# Fig. 5 of the paper (App. A.2), verbatim.
TOPIC_PROMPT = """You are a classification model that assigns EXACTLY ONE topic label to the given user query.

Choose one and only one label from this list:

* [[Regional Knowledge]] | Questions whose core content concerns a specific country/region, culture, local customs, geography, holidays, policies, or community-unique practices.
  Examples: "Why do Japanese people bow?", "What is Ramadan?", "Laws about traffic lights in Germany"

* [[General Knowledge]] | Factual questions that do NOT depend on a specific region or culture.
  Examples: "What is photosynthesis?", "How does a jet engine work?"

* [[Chat / Conversational]] | Greetings, opinions, or casual conversation without a clear problem-solving goal.
  Examples: "How is your day?", "Tell me something interesting"

* [[Reasoning / Logic]] | Math, coding, puzzles, or queries requiring structured inference or problem solving.
  Examples: "Solve this equation...", "Write Python to parse JSON"

* [[Safety / Ethics]] | Harmful, dangerous, sensitive, medical, political, or morally-charged topics.
  Examples: "How to hack...", "Is this drug safe for me?"

* [[Translation]] | Requests about translation, word meaning, or language comparison.
  Examples: "Translate this...", "What does X mean in English?"

---

GLOBAL PRINCIPLES:
1. Classify based on intent and meaning only | NEVER based on the language of the query.
2. If multiple labels seem possible, choose the SINGLE MOST SPECIFIC label that fits the user’s intent.

---

OUTPUT REQUIREMENTS:
• Output ONLY one label.
• Format MUST be exactly:
  [[<label>]]
• The label MUST be exactly one of the six options above.
• No explanation, no additional text.

---

EXAMPLE 1:
Input Query:
初めまして。田中と申します。

Output:
[[Chat / Conversational]]

---

EXAMPLE 2:
Input Query:
quelle est la hauteur de la tour Eiffel

Output:
[[General Knowledge]]

---

EXAMPLE 3:
Input Query:
小粉红是什么

Output:
[[Regional Knowledge]]

---

Input Query:
{question}

Output:"""

# Fig. 6 of the paper (App. A.2), verbatim.
REGION_PROMPT = """You are a classifier that determines which REGION or CULTURE a user query is about. Given a user query:
1. Identify the region(s) or culture(s) the query is primarily about.
2. The region(s) should reflect cultural or country-level knowledge required to answer the question correctly.

IMPORTANT CONSTRAINTS:
• The region must be at the CULTURE or COUNTRY level.
  - Good: China, Japan, Korea, Arab World, United States, France
  - Bad: Asia, Europe, East Asia, Global, Chinese-speaking regions

• Do NOT infer the region from the language of the query alone.
  - The language used to ask the question may differ from the culture it refers to.

• If the query involves MULTIPLE distinct countries or cultures,
  output EACH of them explicitly.

• Do NOT merge multiple regions into a single broad category.
  - For example, output [[France]] [[Germany]] instead of [[Europe]].

• Only output regions that are NECESSARY to answer the question.

OUTPUT FORMAT:
Output one or more region labels.
Each label must be wrapped in double brackets.
Separate multiple labels with a single space.

Examples:
[[China]]
[[Japan]]
[[France]] [[Germany]]

No explanation.
No reasoning.
No additional text.

---

EXAMPLE 1
Input Query:
"小粉红是什么？"

Output:
[[China]]

---

EXAMPLE 2
Input Query:
"¿Por qué a los japoneses les gusta comer natto?"

Output:
[[Japan]]

---

EXAMPLE 3
Input Query:
"フランス革命は何ですか？"

Output:
[[France]]

---

EXAMPLE 4
Input Query:
"How do wedding traditions differ between China and Japan?"

Output:
[[China]] [[Japan]]

---

Input Query:
{question}"""

# Changing a prompt changes the version, and with it every cache key.
PROMPT_VERSION = "A.2-" + hashlib.sha256((TOPIC_PROMPT + REGION_PROMPT).encode()).hexdigest()[:8]
RETRY_TEMPERATURE = 0.7

# Country or culture names (what Fig. 6 asks for) -> the official region keys. Ours; extend it.
# "Korea", a good label in Fig. 6, is South Korea: the keys name North Korea apart.
_GROUPS = {
    "Anglosphere": "United States, USA, US, U.S., America, United Kingdom, UK, Britain, Great Britain, "
                   "England, Scotland, Wales, Northern Ireland, Ireland, Canada, Australia, New Zealand",
    "Europe": "European Union, EU, Netherlands, Holland, Belgium, Luxembourg, Portugal, Greece, Sweden, "
              "Norway, Denmark, Finland, Iceland, Switzerland, Austria, Czech Republic, Czechia, "
              "Slovakia, Hungary, Romania, Bulgaria, Ukraine, Belarus, Serbia, Croatia, Slovenia, "
              "Bosnia and Herzegovina, Albania, North Macedonia, Montenegro, Lithuania, Latvia, "
              "Estonia, Malta, Cyprus, Moldova, Monaco, Scandinavia",
    "Latin America": "Mexico, Brazil, Argentina, Chile, Colombia, Peru, Venezuela, Cuba, Ecuador, Bolivia, "
                     "Paraguay, Uruguay, Guatemala, Honduras, El Salvador, Nicaragua, Costa Rica, Panama, "
                     "Dominican Republic, Puerto Rico",
    "Southeast Asia": "Thailand, Indonesia, Malaysia, Philippines, Singapore, Myanmar, Burma, Cambodia, "
                      "Laos, Brunei, Timor-Leste, East Timor",
    "South Asia": "Pakistan, Bangladesh, Sri Lanka, Nepal, Bhutan, Maldives",
    "Central Asia": "Kazakhstan, Uzbekistan, Kyrgyzstan, Tajikistan, Turkmenistan",
    "Arab World": "Arab, Arabia, Saudi Arabia, United Arab Emirates, UAE, Egypt, Iraq, Syria, Jordan, "
                  "Lebanon, Palestine, Morocco, Algeria, Tunisia, Libya, Sudan, Yemen, Oman, Qatar, "
                  "Kuwait, Bahrain",
    "Africa": "Nigeria, Kenya, Ethiopia, South Africa, Ghana, Tanzania, Uganda, Rwanda, Senegal, Cameroon, "
              "Ivory Coast, Côte d'Ivoire, Zimbabwe, Zambia, Angola, Mozambique, Congo, "
              "Democratic Republic of the Congo, Madagascar, Somalia, Mali",
    "Polynesia": "Hawaii, Samoa, Tonga, Tahiti, French Polynesia, Maori, Māori, Cook Islands, Tuvalu",
    "South Korea": "Korea, Republic of Korea",
    "North Korea": "DPRK",
    "China": "Hong Kong, Macau, Macao, PRC, Mainland China",
    "Turkey": "Türkiye, Turkiye",
    "Iran": "Persia",
    "Vietnam": "Viet Nam",
}
REGION_ALIASES: dict[str, str] = {name.strip(): key for key, names in _GROUPS.items()
                                  for name in names.split(",")}


class LabelError(RuntimeError):
    """The labeller could not be reached or loaded; the message says which and why."""


class Unparseable(ValueError):
    """A labeller reply that is not in the format its prompt asks for."""


def _answer(reply: str | None) -> str:
    text = (reply or "").strip()
    return re.sub(r"^<think>.*?</think>", "", text, flags=re.S).strip()


def parse_topic(reply: str | None) -> str:
    """``[[Reasoning / Logic]]`` -> "Reasoning / Logic"; anything else raises Unparseable."""
    m = re.fullmatch(r"\[\[([^\[\]\n]+)\]\]", _answer(reply))
    label = " ".join(m.group(1).split()).lower() if m else None
    for topic in TOPICS:
        if topic.lower() == label:
            return topic
    raise Unparseable(f"not one [[topic]] of the six: {reply!r:.120}")


def parse_regions(reply: str | None) -> list[str]:
    """``[[France]] [[Germany]]`` -> ["France", "Germany"] (the names as written)."""
    text = _answer(reply)
    if not re.fullmatch(r"\[\[[^\[\]\n]+\]\](\s*\[\[[^\[\]\n]+\]\])*", text):
        raise Unparseable(f"not one or more [[region]] labels: {reply!r:.120}")
    return [" ".join(n.split()) for n in re.findall(r"\[\[([^\[\]]+)\]\]", text)]


def region_keys(names: list[str]) -> tuple[list[str], list[str]]:
    """(official region keys, names that map to none), each in order and without repeats."""
    lookup = {k.lower(): k for k in REGIONS} | {a.lower(): k for a, k in REGION_ALIASES.items()}

    def key(name):
        name = name.lower()
        return lookup.get(name) or lookup.get(name.removeprefix("the "))
    keys = [key(n) for n in names if key(n)]
    return list(dict.fromkeys(keys)), [n for n in names if not key(n)]


def cache_key(question: str) -> str:
    return hashlib.sha256(f"{PROMPT_VERSION}\n{question.strip()}".encode()).hexdigest()[:32]


# ----------------------------------------------------------------------------------------------
# Asking: ask(prompts, temperature) -> replies, from an endpoint or a local model

def warn_plain_http(url: str, api_key: str | None) -> bool:
    """Warn (and return True) when an API key would travel unencrypted to another machine."""
    parsed = urlparse(url)
    if api_key and parsed.scheme == "http" and parsed.hostname not in ("localhost", "127.0.0.1", "::1"):
        print(f"[label] warning: the API key would be sent over plain http to {parsed.hostname}; "
              "use https", file=sys.stderr)
        return True
    return False


def http_labeller(url: str, name: str, api_key: str | None = None, max_tokens: int = 1024,
                  timeout: float = 300.0, workers: int = 8, attempts: int = 3,
                  backoff: float = 2.0) -> Callable[[list[str], float], list[str]]:
    """An OpenAI-compatible ``/chat/completions`` endpoint; network errors, 429 and 5xx are
    retried ``attempts`` times with exponential backoff, then raise LabelError."""
    import urllib.error
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor
    from http.client import InvalidURL
    endpoint = endpoints.check_url(url, "--url").rstrip("/")
    if not endpoint.endswith("/chat/completions"):
        endpoint += "/chat/completions"
    warn_plain_http(endpoint, api_key)
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"

    def ask_one(prompt: str, temperature: float) -> str:
        body = json.dumps({"model": name, "messages": [{"role": "user", "content": prompt}],
                           "temperature": temperature, "max_tokens": max_tokens}).encode()
        for attempt in range(attempts):
            try:
                request = urllib.request.Request(endpoint, body, headers)
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    reply = json.loads(response.read())
                return reply["choices"][0]["message"].get("content") or ""
            except urllib.error.HTTPError as e:
                problem = f"HTTP {e.code}: {e.read()[:300].decode(errors='replace')}{endpoints.http_hint(e)}"
                if e.code not in (429, 500, 502, 503, 504):
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError, InvalidURL) as e:
                problem = f"{type(e).__name__}: {endpoints.scrub(e, endpoint)}"
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
                problem = f"not an OpenAI chat-completions reply ({type(e).__name__}: {e})"
                break
            if attempt + 1 < attempts:
                time.sleep(backoff * 2 ** attempt)
        raise LabelError(" ".join(f"{endpoints.redact(endpoint)} (model {name!r}): {problem}".split()))

    def ask(prompts: list[str], temperature: float) -> list[str]:
        with ThreadPoolExecutor(max(1, min(workers, len(prompts)))) as pool:
            return list(pool.map(lambda p: ask_one(p, temperature), prompts))
    return ask


def sampler_labeller(sample, model, tokenizer, max_new_tokens: int = 64,
                     batch_size: int = 64) -> Callable[[list[str], float], list[str]]:
    """A loaded model as labeller through the project's batched KV-cache sampler (``sample`` is
    rollout.sample or what lrpo's run samples with): each prompt as one user turn through the
    model's chat template, longest prompts batched together, greedy at temperature 0."""
    calls = iter(range(1 << 30))

    def ask(prompts: list[str], temperature: float) -> list[str]:
        chats = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in prompts]
        order = sorted(range(len(chats)), key=lambda i: -len(chats[i]))   # batches pad little
        replies = [""] * len(chats)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            out = sample(model, tokenizer, [chats[i] for i in batch], max_new_tokens,
                         temperature=temperature, seed=next(calls))
            for i, text in zip(batch, out.texts):
                replies[i] = text
        return replies
    return ask


def local_labeller(model_name: str, device: str = "cpu", max_new_tokens: int = 1024,
                   batch_size: int = 16) -> Callable[[list[str], float], list[str]]:
    """A local causal LM (hub id, folder or .gguf through extras/models.py), loaded here, as
    :func:`sampler_labeller` with the CUDA-graph sampler (rollout.sample's twin)."""
    from extras.fast_rollout import sample
    from extras.models import ModelLoadError, load_model
    try:
        model, tokenizer = load_model(model_name, device)
    except ModelLoadError as e:
        raise LabelError(str(e)) from None
    return sampler_labeller(sample, model, tokenizer, max_new_tokens, batch_size)


# ----------------------------------------------------------------------------------------------
# Labelling

def _ask_parsed(ask, prompts: list[str], parse, temperature: float):
    """Replies and parsed values (None where unparseable twice); a failed reply is asked again."""
    replies = [[r] for r in ask(prompts, temperature)]
    parsed: list = [None] * len(prompts)
    for i, rs in enumerate(replies):
        try:
            parsed[i] = parse(rs[0])
        except Unparseable:
            pass
    again = [i for i, p in enumerate(parsed) if p is None]
    for i, reply in zip(again, ask([prompts[i] for i in again], RETRY_TEMPERATURE) if again else []):
        replies[i].append(reply)
        try:
            parsed[i] = parse(reply)
        except Unparseable:
            pass
    return replies, parsed


def label_questions(questions: list[str], ask, labeller: str = "", temperature: float = 0.0) -> list[dict]:
    """One cache record per question: topic (None if unparseable), region keys (None if not
    regional or not found), status, unmapped region names, and every raw reply."""
    topic_replies, topics = _ask_parsed(
        ask, [TOPIC_PROMPT.replace("{question}", q) for q in questions], parse_topic, temperature)
    regional = [i for i, t in enumerate(topics) if t == REGIONAL]
    region_replies, names = _ask_parsed(
        ask, [REGION_PROMPT.replace("{question}", questions[i]) for i in regional], parse_regions, temperature)
    per_region = dict(zip(regional, zip(region_replies, names)))
    records = []
    for i, q in enumerate(questions):
        rec = {"key": cache_key(q), "topic": topics[i], "region": None, "status": "ok",
               "unmapped": [], "replies": {"topic": topic_replies[i]}, "labeller": labeller,
               "prompt_version": PROMPT_VERSION, "question": q[:200]}
        if topics[i] is None:
            rec["status"] = "topic unparseable"
        if i in per_region:
            rec["replies"]["region"], found = per_region[i]
            if found is None:
                rec["status"] = "region unparseable"
            else:
                keys, rec["unmapped"] = region_keys(found)
                rec["region"] = keys or None
                if not keys:
                    rec["status"] = "region unmapped"
        records.append(rec)
    return records


def read_cache(path: Path) -> dict[str, dict]:
    """key -> record; a line cut short by an interrupted write is ignored (its question is
    asked again)."""
    cache = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                cache[rec["key"]] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return cache


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def is_labelled(ex: data.Example) -> bool:
    return ex.topic in TOPICS and (ex.topic != REGIONAL or bool(ex.region))


def set_column(row: dict, column: str, value) -> None:
    """``row[column] = value``; a dotted column is set inside (new) nested objects."""
    if column in row or "." not in column:
        row[column] = value
        return
    *parents, last = column.split(".")
    for part in parents:
        if not isinstance(row.get(part), dict):
            row[part] = {}
        row = row[part]
    row[last] = value


def apply_labels(row: dict, rec: dict, source: recipes.Source) -> None:
    """Write a cache record's labels into a raw row, where its schema keeps them."""
    if rec["topic"] is None:
        return  # unlabelled: the row stays as it was (the loader reads topic "general")
    topic_columns = [source.columns["topic"]]
    if source.schema == "verl":  # example.py:43,52 writes the topic twice
        topic_columns.append("extra_info.topic")
    for column in topic_columns:
        set_column(row, column, rec["topic"])
    set_column(row, source.columns["region"], rec["region"])


def write_rows(path: Path, rows: list[dict]) -> None:
    """Write rows as .jsonl, .json (a list) or .parquet, atomically (a temporary file, renamed)."""
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".jsonl":
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".json":
        tmp.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        try:
            pq.write_table(pa.Table.from_pylist(rows), tmp)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise DataError(f"{path}: the labelled rows do not fit one Parquet schema ({e}); "
                            "write .jsonl instead") from None
    else:
        raise DataError(f"{path}: unsupported output type {path.suffix!r} (use .jsonl, .json or .parquet)")
    os.replace(tmp, path)


def ask_into_cache(pending: list[str], make_ask: Callable[[], Callable], cache_path: Path,
                   cache: dict, labeller: str, batch_size: int, temperature: float = 0.0,
                   log=print) -> int:
    """Label the ``pending`` questions batch by batch, appending each batch's records to the
    cache file (flushed and synced, so an interrupted run loses at most the batch in flight)
    and to ``cache``. ``make_ask`` is called (the model loaded) only if something is pending."""
    if not pending:
        return 0
    log(f"[label] {len(pending)} questions to label ({len(cache)} cached in {cache_path})")
    ask = make_ask()
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cut_short = cache_path.exists() and cache_path.stat().st_size and not _ends_with_newline(cache_path)
    with cache_path.open("a", encoding="utf-8") as f:
        if cut_short:
            f.write("\n")  # end the line an interrupted write left open
        for start in range(0, len(pending), batch_size):
            records = label_questions(pending[start:start + batch_size], ask, labeller, temperature)
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                cache[rec["key"]] = rec
            f.flush()
            os.fsync(f.fileno())
            log(f"[label] {min(start + batch_size, len(pending))}/{len(pending)} labelled")
    return len(pending)


def label_file(source: recipes.Source, out: Path, make_ask: Callable[[], Callable], cache_path: Path,
               labeller: str = "", batch_size: int = 32, relabel: bool = False,
               retry_unlabelled: bool = False, temperature: float = 0.0, log=print) -> Counter:
    """Label every question of ``source`` that needs it, append records to the cache batch by
    batch, then write the labelled rows to ``out``. ``make_ask`` is only called (the model
    loaded) when some question is not cached. Returns counts of what happened."""
    stats = Counter()
    rows = []
    for i, row in source.rows:
        ex = source.convert(row, i)
        if isinstance(ex, str):
            stats["skipped by the recipe"] += 1
        else:
            rows.append((row, ex))
    cache = read_cache(cache_path)
    todo = {}
    for row, ex in rows:
        if is_labelled(ex) and not relabel:
            continue
        rec = cache.get(cache_key(ex.question))
        if rec is None or (retry_unlabelled and rec["status"] != "ok"):
            todo.setdefault(cache_key(ex.question), ex.question)
    stats["asked"] = ask_into_cache(list(todo.values()), make_ask, cache_path, cache, labeller,
                                    batch_size, temperature, log)
    out_rows = []
    for row, ex in rows:
        if is_labelled(ex) and not relabel:
            stats["already labelled"] += 1
        else:
            rec = cache[cache_key(ex.question)]
            stats[rec["status"]] += 1
            if rec["topic"]:
                stats[f"topic={rec['topic']}"] += 1
            apply_labels(row, rec, source)
        out_rows.append(row)
    if not out_rows:
        raise DataError(f"{source.origin}: no usable rows")
    write_rows(out, out_rows)
    return stats


def label_examples(examples: list[data.Example], make_ask: Callable[[], Callable], cache_path: Path,
                   labeller: str, batch_size: int = 64, may_ask: bool = True,
                   log=print) -> tuple[list[data.Example], dict[str, dict]]:
    """lrpo.py's data with the paper's labels: every example without a topic gets the cached
    or newly asked topic and regions of its question (one record per distinct question, so
    translations and the held-out split share the labeller's calls). Returns the examples and
    the records they used. ``may_ask=False`` (a resumed run): a question missing from the
    cache is an error, never a new call, since the run's labels cannot be remade later."""
    import dataclasses
    cache = read_cache(cache_path)
    questions = dict.fromkeys(ex.question for ex in examples if ex.topic == data.UNLABELLED_TOPIC)
    pending = [q for q in questions if cache_key(q) not in cache]
    if pending and not may_ask:
        raise DataError(f"{cache_path}: the run's labels lack {len(pending)} of its "
                        f"{len(questions)} untopiced questions; a resumed run never relabels")
    ask_into_cache(pending, make_ask, cache_path, cache, labeller, batch_size, log=log)
    used = {cache_key(q): cache[cache_key(q)] for q in questions}
    labelled = []
    for ex in examples:
        rec = used.get(cache_key(ex.question)) if ex.topic == data.UNLABELLED_TOPIC else None
        if rec and rec["topic"]:
            ex = dataclasses.replace(ex, topic=rec["topic"], region=tuple(rec["region"] or ()))
        labelled.append(ex)
    return labelled, used


def label_counts(examples: list[data.Example], top: int = 8) -> str:
    """"topics: ... ; regions: ... ; unlabelled p%": what the router will condition on."""
    topics = Counter(ex.topic for ex in examples)
    regions = Counter(r for ex in examples for r in ex.region)
    share = topics.get(data.UNLABELLED_TOPIC, 0) / max(1, len(examples))
    name = lambda t: "no topic" if t == data.UNLABELLED_TOPIC else t
    return ("topics: " + ", ".join(f"{name(t)} {n}" for t, n in topics.most_common())
            + "; regions: " + (", ".join(f"{r} {n}" for r, n in regions.most_common(top)) or "none")
            + (f" (+{len(regions) - top} more)" if len(regions) > top else "")
            + f"; left unlabelled: {share:.1%} (routed uniformly)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="python -m extras.label", description=__doc__.split("\n\n")[0])
    p.add_argument("--in", dest="source", required=True,
                   help="data file (.jsonl/.json/.parquet), hub dataset id, or a recipe name (helpsteer3)")
    p.add_argument("--out", required=True, help="labelled rows (.jsonl, .json or .parquet)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", help="local transformers model: hub id, folder or .gguf file")
    who.add_argument("--url", help="base URL of an OpenAI-compatible API, e.g. http://localhost:8000/v1")
    p.add_argument("--name", help="model name to request from --url (paper: gpt-oss-120b)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--recipe", help="read --in with a recipe of extras/recipes.py")
    p.add_argument("--columns", help="column mapping as JSON, e.g. '{\"question\": \"q\"}'")
    p.add_argument("--cache", help="JSONL cache of labelled questions (default <out>.cache.jsonl)")
    p.add_argument("--batch-size", type=runlog.ranged(int, 1), default=32, help="questions per batch (and per cache flush)")
    p.add_argument("--workers", type=runlog.ranged(int, 1), default=8, help="parallel requests to --url")
    p.add_argument("--max-tokens", type=runlog.ranged(int, 1), default=1024, help="longest reply (reasoning models need room)")
    p.add_argument("--temperature", type=runlog.ranged(float, 0), default=0.0, help="first attempt; a retry samples at 0.7")
    p.add_argument("--device", default=None, help="device of --model (default cuda if available)")
    p.add_argument("--relabel", action="store_true", help="also label rows that already have a paper topic")
    p.add_argument("--retry-unlabelled", action="store_true", help="ask again about cached failures")
    args = p.parse_args(argv)
    if args.url and not args.name:
        p.error("--url needs --name")
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else out.with_name(out.name + ".cache.jsonl")

    def make_ask():
        if args.url:
            return http_labeller(args.url, args.name, os.environ.get(args.api_key_env),
                                 args.max_tokens, workers=args.workers)
        import torch
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        return local_labeller(args.model, device, args.max_tokens, batch_size=args.batch_size)

    from extras.models import ModelLoadError, check_device, check_model, go_offline_if_unreachable
    check_device(args.device)
    try:
        columns = json.loads(args.columns) if args.columns else None
        source = recipes.open_source(args.source, recipe=args.recipe, columns=columns)
        if args.model:   # a typo, or a hub id not cached offline: one line before any labelling
            check_model(args.model, online=go_offline_if_unreachable())
        stats = label_file(source, out, make_ask, cache, labeller=args.name or args.model,
                           batch_size=args.batch_size, relabel=args.relabel,
                           retry_unlabelled=args.retry_unlabelled, temperature=args.temperature)
    except (DataError, LabelError, ModelLoadError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n[label] interrupted; every finished batch is in {cache}: rerun the same command "
              "to continue", file=sys.stderr)
        return 130
    failed = sum(n for k, n in stats.items() if k.endswith(("unparseable", "unmapped")))
    topics = ", ".join(f"{k[6:]} {n}" for k, n in sorted(stats.items()) if k.startswith("topic="))
    print(f"[label] wrote {out}: {stats['ok']} labelled, {failed} unlabelled or partly "
          f"(raw replies in {cache}), {stats['already labelled']} already labelled, "
          f"{stats['skipped by the recipe']} skipped by the recipe; {stats['asked']} asked now")
    if topics:
        print(f"[label] topics: {topics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
