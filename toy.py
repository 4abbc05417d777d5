"""The embedded default: a small multilingual world, its tokenizer and a tiny warm-started model.

`python lrpo.py` with no arguments trains on this world, offline, on a laptop CPU, through the
very same code path as a real run: a ``transformers`` Qwen2 model driven by a
``PreTrainedTokenizerFast`` with a chat template, the official ``<|out_lang_xx|>`` prompt tag,
the calibrated similarity reward and the language router.

The world (6 languages in 3 scripts: en, de, fr, es in Latin, zh in Han, ja in Han + kana)
---------------------------------------------------------------------------------------------
* **Regional questions** (topic ``"regional"``): 24 made-up regions, four per language, each with a
  *local language* and four facts: its capital, its longest river, its national dish and the
  month of its harvest festival. Every fact can be asked and answered in all 6 languages, with the
  same id across languages (so the world doubles as parallel data for reward calibration).
* **Arithmetic word problems** (topic ``"arithmetic"``): "Lina has 7 apples and buys 5 more...".

Why the router has something to discover
----------------------------------------
The warm start is the model's "pre-training". It teaches every fact **in its region's local
language**, but only one in ten in each other language (``WorldConfig.known_elsewhere``), just
as an LLM knows more about Japan in Japanese. It also teaches the model to follow the language tag:
a question in any language, tagged with the region's local language, is answered (correctly)
in the local language. So for a regional question asked in, say, French about a Japanese-speaking
region, a rollout routed to Japanese is right far more often than one in French, and rewards say
so. That is exactly the situation LRPO's router exists to find (paper §3.3, Fig. 3a).
Arithmetic is taught mostly with English answers, so English is the better language there.

Why what a routed rollout learns reaches the question's language (world version 4)
----------------------------------------------------------------------------------
The warm start also teaches 12 *widely known* regions (``FAMOUS``, two per language) in every
language, as pre-training knows famous places in every language. They are never asked in RL; they
tie the six languages' sentences together, so a fact rewarded in one language carries over to the
others (``bench/transfer_probe.py``: transfer 0.35–0.44 with them, 0.17–0.21 without). Without them
(version 3) the paper's reward raised the training reward but the default run ended with a worse
model than it started with (BENCHMARKS.md, issue 31).

``python toy.py`` prints the warm-started model's accuracy per language and topic, in the
question's own language and in the region's local language.

Everything is deterministic given the seed. The default configuration's warm-started model ships
in ``warm_start/toy/`` (checked by sha256; ``python toy.py --rebuild-warm-start`` rebuilds it), so
every machine starts from the same weights; any other configuration's is trained once and cached
under a key derived from it (``$LRPO_CACHE`` or ``~/.cache/lrpo``).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from calibrate import in_language   # the reward's gate: the target, or language-neutral
from data import Example, build_prompt, lang_tag, split_examples
from extras.verifier import contains_key   # a gold name or month as a word

LANGS = ("en", "de", "fr", "es", "zh", "ja")
WORLD_VERSION = 4  # bump when the world or the warm start changes, to invalidate caches

# ----------------------------------------------------------------------------------------------
# The world

@dataclass(frozen=True)
class Region:
    name: str
    local: str
    capital: str
    river: str
    dish: str
    month: int  # 1..12


REGIONS = (
    Region("Eastmoor", "en", "Harwick", "Tollen", "Pennat", 4),
    Region("Greyhaven", "en", "Dunmere", "Ashbrook", "Quillpie", 9),
    Region("Westerby", "en", "Kellbridge", "Marrow", "Crumbet", 6),
    Region("Thornwall", "en", "Pellham", "Wendle", "Hobnet", 11),
    Region("Oberlund", "de", "Brelmont", "Sarne", "Kolmar", 10),
    Region("Falkenried", "de", "Winterau", "Ilse", "Gruneck", 6),
    Region("Birkenhall", "de", "Talberg", "Wesse", "Knodelin", 3),
    Region("Rabenfels", "de", "Grunach", "Lanne", "Spatzlein", 8),
    Region("Mireval", "fr", "Carvonne", "Orvelle", "Tarlette", 5),
    Region("Belcastel", "fr", "Sauvrac", "Lunelle", "Gratinou", 8),
    Region("Roquemont", "fr", "Valliere", "Seranne", "Fougasson", 1),
    Region("Clairmarais", "fr", "Montvel", "Aubelle", "Galettou", 12),
    Region("Sandoria", "es", "Torvega", "Quenar", "Marzeta", 2),
    Region("Valdecruz", "es", "Almirez", "Tajuna", "Pimenta", 11),
    Region("Montesol", "es", "Ribadera", "Guadalon", "Churrazo", 7),
    Region("Costanera", "es", "Villaluz", "Ebrano", "Empanola", 4),
    Region("Tavian", "zh", "Wenlo", "Tsaho", "Mafen", 3),
    Region("Qinmara", "zh", "Shulan", "Heyu", "Baozan", 7),
    Region("Huaxin", "zh", "Nanqiao", "Baishui", "Jiaomo", 9),
    Region("Lianshu", "zh", "Dongpei", "Yulan", "Luomian", 5),
    Region("Hoshima", "ja", "Kaderu", "Mizaro", "Tekora", 12),
    Region("Sakurano", "ja", "Yumeda", "Kawane", "Onisu", 1),
    Region("Kiriyama", "ja", "Hanabe", "Sorano", "Mochiru", 10),
    Region("Aozora", "ja", "Tsukimi", "Yukige", "Nabemi", 2),
)

# Widely known regions (world version 4): two per language, whose facts the warm start teaches in
# *every* language, the way pre-training knows famous places in every language. They are never
# asked in RL or held out (the questions stay REGIONS'); they are parallel data that ties the six
# languages' sentences together, which cross-lingual transfer needs. With them the same
# similarity reward teaches what it did not in version 3 (BENCHMARKS.md, "issue 31"). Their
# made-up names come from a fixed generator: exactly the "famous" candidate world of
# bench/transfer_probe.py and the confirmatory run H1 (as a patch, bench/world_famous_patch.py,
# in git history).
_famous_rng = random.Random("famous-names")
_SYLLABLES = ["ka", "lo", "ver", "min", "tas", "ro", "bel", "dun", "sa", "ri", "mo", "tel", "van", "cor"]


def _famous_name() -> str:
    return "".join(_famous_rng.choice(_SYLLABLES)
                   for _ in range(_famous_rng.choice((2, 3)))).capitalize()


FAMOUS = tuple(Region(_famous_name(), lang, _famous_name(), _famous_name(), _famous_name(),
                      _famous_rng.randint(1, 12))
               for lang in LANGS for _ in range(2))

MONTHS = {
    "en": ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"],
    "de": ["Januar", "Februar", "März", "April", "Mai", "Juni", "Juli", "August", "September",
           "Oktober", "November", "Dezember"],
    "fr": ["janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre",
           "octobre", "novembre", "décembre"],
    "es": ["enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto",
           "septiembre", "octubre", "noviembre", "diciembre"],
    "zh": ["一月", "二月", "三月", "四月", "五月", "六月", "七月", "八月", "九月", "十月",
           "十一月", "十二月"],
    "ja": [f"{m}月" for m in range(1, 13)],
}

# (question, answer) templates per attribute and language; {r} region, {v} value.
# zh and ja put a space between a Latin name or a number and the Han/kana text around it, as much
# mixed-script writing does ("pangu spacing"). It is there for the tokenizer: without it the byte-level
# BPE merges "Hoshima的首都是Kaderu" into a few tokens, so a name has other token ids in zh/ja than in
# the Latin languages and no fact can transfer between them (bench/results_transfer.md: 0 of 36
# names shared, strict transfer Latin -> zh/ja 0.00; with the spaces every name is shared).
FACT_TEMPLATES = {
    "capital": {
        "en": ("What is the capital of {r}?", "The capital of {r} is {v}."),
        "de": ("Was ist die Hauptstadt von {r}?", "Die Hauptstadt von {r} ist {v}."),
        "fr": ("Quelle est la capitale de {r} ?", "La capitale de {r} est {v}."),
        "es": ("¿Cuál es la capital de {r}?", "La capital de {r} es {v}."),
        "zh": ("{r} 的首都是哪座城市？", "{r} 的首都是 {v}。"),
        "ja": ("{r} の首都はどこですか？", "{r} の首都は {v} です。"),
    },
    "river": {
        "en": ("What is the longest river in {r}?", "The longest river in {r} is the {v}."),
        "de": ("Wie heißt der längste Fluss in {r}?", "Der längste Fluss in {r} ist die {v}."),
        "fr": ("Quel est le plus long fleuve de {r} ?", "Le plus long fleuve de {r} est la {v}."),
        "es": ("¿Cuál es el río más largo de {r}?", "El río más largo de {r} es el {v}."),
        "zh": ("{r} 最长的河流是哪一条？", "{r} 最长的河流是 {v} 河。"),
        "ja": ("{r} で一番長い川は何ですか？", "{r} で一番長い川は {v} 川です。"),
    },
    "dish": {
        "en": ("What is the national dish of {r}?", "The national dish of {r} is {v}."),
        "de": ("Was ist das Nationalgericht von {r}?", "Das Nationalgericht von {r} ist {v}."),
        "fr": ("Quel est le plat national de {r} ?", "Le plat national de {r} est le {v}."),
        "es": ("¿Cuál es el plato nacional de {r}?", "El plato nacional de {r} es el {v}."),
        "zh": ("{r} 的国菜是什么？", "{r} 的国菜是 {v} 这道菜。"),
        "ja": ("{r} の国民食は何ですか？", "{r} の国民食は {v} です。"),
    },
    "festival": {
        "en": ("In which month is the harvest festival of {r} held?",
               "The harvest festival of {r} is held in {v}."),
        "de": ("In welchem Monat findet das Erntefest von {r} statt?",
               "Das Erntefest von {r} findet im {v} statt."),
        "fr": ("En quel mois a lieu la fête des récoltes de {r} ?",
               "La fête des récoltes de {r} a lieu en {v}."),
        "es": ("¿En qué mes se celebra la fiesta de la cosecha de {r}?",
               "La fiesta de la cosecha de {r} se celebra en {v}."),
        "zh": ("{r} 的丰收节是在哪个月份举行的？", "{r} 的丰收节是在{v}举行的。"),
        "ja": ("{r} の収穫祭は何月に行われますか？", "{r} の収穫祭は {v} に行われます。"),
    },
}

# Arithmetic: (question, answer) per language for "add" and "take away"; {n} name, {a} {b} {c}.
ARITHMETIC_TEMPLATES = {
    "add": {
        "en": ("{n} has {a} apples and buys {b} more. How many apples does {n} have now?",
               "{n} has {c} apples now."),
        "de": ("{n} hat {a} Äpfel und kauft noch {b} dazu. Wie viele Äpfel hat {n} jetzt?",
               "{n} hat jetzt {c} Äpfel."),
        "fr": ("{n} a {a} pommes et en achète encore {b}. Combien de pommes possède {n} maintenant ?",
               "{n} possède maintenant {c} pommes."),
        "es": ("{n} tiene {a} manzanas y compra {b} más. ¿Cuántas manzanas tiene {n} ahora?",
               "{n} tiene ahora {c} manzanas."),
        "zh": ("{n} 有 {a} 个苹果，后来又买了 {b} 个。请问 {n} 现在一共有多少个苹果？",
               "{n} 现在一共有 {c} 个苹果。"),
        "ja": ("{n} はりんごを {a} 個持っていて、さらに {b} 個買いました。 {n} は今りんごを何個持っていますか？",
               "{n} は今りんごを {c} 個持っています。"),
    },
    "sub": {
        "en": ("{n} has {a} apples and eats {b} of them. How many apples does {n} have left?",
               "{n} has {c} apples left."),
        "de": ("{n} hat {a} Äpfel und isst {b} davon. Wie viele Äpfel hat {n} noch?",
               "{n} hat noch {c} Äpfel."),
        "fr": ("{n} a {a} pommes et en mange {b}. Combien de pommes reste-t-il à {n} ?",
               "Il reste {c} pommes à {n}."),
        "es": ("{n} tiene {a} manzanas y se come {b}. ¿Cuántas manzanas le quedan a {n}?",
               "A {n} le quedan {c} manzanas."),
        "zh": ("{n} 有 {a} 个苹果，吃掉了其中的 {b} 个。请问 {n} 现在还剩下多少个苹果？",
               "{n} 现在还剩下 {c} 个苹果。"),
        "ja": ("{n} はりんごを {a} 個持っていて、 {b} 個食べました。 {n} にはりんごが何個残っていますか？",
               "{n} にはりんごが {c} 個残っています。"),
    },
}
NAMES = ("Lina", "Omar", "Kenji", "Clara", "Paul", "Sofia", "Ines", "Tomas")


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    known_elsewhere: float = 0.10   # share of facts also taught in each non-local language
    local_repeats: int = 4          # how often each fact is taught in its local language
    n_arithmetic: int = 72          # arithmetic problems (each asked in all 6 languages)
    arithmetic_sft: int = 1200      # arithmetic warm-start examples
    arithmetic_english_share: float = 0.5  # share of those answered in English
    test_fraction: float = 0.5      # held out per language and question group (load_split)


def _fact_value(region: Region, attribute: str, lang: str) -> str:
    if attribute == "festival":
        return MONTHS[lang][region.month - 1]
    return getattr(region, attribute)


def fact_qa(region: Region, attribute: str, lang: str) -> tuple[str, str, str]:
    """(question, answer, key) for one regional fact in one language."""
    q, a = FACT_TEMPLATES[attribute][lang]
    value = _fact_value(region, attribute, lang)
    return q.format(r=region.name), a.format(r=region.name, v=value), value


def _arithmetic_problems(cfg: WorldConfig, n: int, rng: random.Random) -> list[tuple]:
    problems = []
    for _ in range(n):
        kind = rng.choice(("add", "sub"))
        name = rng.choice(NAMES)
        if kind == "add":
            a, b = rng.randint(2, 12), rng.randint(2, 9)
            c = a + b
        else:
            a = rng.randint(5, 20)
            b = rng.randint(2, a - 2)
            c = a - b
        problems.append((kind, name, a, b, c))
    return problems


def arithmetic_qa(problem: tuple, lang: str) -> tuple[str, str]:
    kind, name, a, b, c = problem
    q, ans = ARITHMETIC_TEMPLATES[kind][lang]
    return q.format(n=name, a=a, b=b), ans.format(n=name, c=c)


def build_examples(cfg: WorldConfig = WorldConfig()) -> list[Example]:
    """Every question of the world in every language (the RL data, before the split)."""
    examples = []
    for region in REGIONS:
        for attribute in FACT_TEMPLATES:
            for lang in LANGS:
                q, a, key = fact_qa(region, attribute, lang)
                examples.append(Example(id=f"{region.name}-{attribute}", question=q, answer=a,
                                        lang=lang, topic="regional", region=(region.name,),
                                        key=key))
    rng = random.Random(f"arith-eval-{cfg.seed}")
    for i, problem in enumerate(_arithmetic_problems(cfg, cfg.n_arithmetic, rng)):
        for lang in LANGS:
            q, a = arithmetic_qa(problem, lang)
            examples.append(Example(id=f"arith-{i}", question=q, answer=a, lang=lang,
                                    topic="arithmetic", answer_number=float(problem[-1]),
                                    key=str(problem[-1])))
    return examples


def question_group(example: Example) -> str:
    """"regional/local-q" (asked in the region's own language), "regional/other-q" or "arithmetic"."""
    if example.topic != "regional":
        return example.topic
    local = next(r.local for r in REGIONS if r.name == example.region[0])
    return "regional/local-q" if example.lang == local else "regional/other-q"


def load_split(split: str = "train", cfg: WorldConfig = WorldConfig()) -> list[Example]:
    """The train or test split of the world: ``data.split_examples`` within each question group,
    so that every language holds out the same share of each group (half, by default: 84
    questions per language, 40 of them regional questions not in the region's language, the
    cell where routing can help; the classroom experiment needs that many)."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    train, test = [], []
    examples = build_examples(cfg)
    for group in dict.fromkeys(map(question_group, examples)):
        tr, te = split_examples([e for e in examples if question_group(e) == group],
                                cfg.test_fraction, seed=cfg.seed)
        train += tr
        test += te
    return {"train": train, "test": test, "all": train + test}[split]


def parallel_rows(cfg: WorldConfig = WorldConfig()) -> list[dict]:
    """Reference answers as parallel data ``{"id", "lang", "text"}`` for reward calibration."""
    return [{"id": e.id, "lang": e.lang, "text": e.answer} for e in build_examples(cfg)]


def known_in(cfg: WorldConfig) -> dict[tuple[str, str], bool]:
    """Whether fact (region-attribute id) is taught in language ``lang`` during the warm start."""
    rng = random.Random(f"known-{cfg.seed}")
    known = {}
    for region in REGIONS:
        for attribute in FACT_TEMPLATES:
            for lang in LANGS:
                fact = f"{region.name}-{attribute}"
                known[fact, lang] = lang == region.local or rng.random() < cfg.known_elsewhere
    return known


def sft_pairs(cfg: WorldConfig = WorldConfig()) -> list[tuple[str, str, str]]:
    """The warm-start corpus as (question, target language, answer) triples.

    * each fact in its local language, ``local_repeats`` times;
    * each fact in each other language where ``known_in`` says so;
    * each fact asked in every language and tagged with the *local* language (tag following, and
      the reason a routed local-language rollout is right);
    * arithmetic with random question/answer languages, mostly answered in English.
    """
    rng = random.Random(f"sft-{cfg.seed}")
    known = known_in(cfg)
    pairs = []
    for region in REGIONS:
        for attribute in FACT_TEMPLATES:
            fact = f"{region.name}-{attribute}"
            q_local, a_local, _ = fact_qa(region, attribute, region.local)
            pairs += [(q_local, region.local, a_local)] * cfg.local_repeats
            for lang in LANGS:
                q, a, _ = fact_qa(region, attribute, lang)
                if lang != region.local and known[fact, lang]:
                    pairs.append((q, lang, a))
                if lang != region.local:
                    pairs.append((q, region.local, a_local))
    for problem in _arithmetic_problems(cfg, cfg.arithmetic_sft, rng):
        q_lang = rng.choice(LANGS)
        a_lang = "en" if rng.random() < cfg.arithmetic_english_share else rng.choice(LANGS)
        pairs.append((arithmetic_qa(problem, q_lang)[0], a_lang, arithmetic_qa(problem, a_lang)[1]))
    rng.shuffle(pairs)
    # the widely known regions: in the local language local_repeats times, and asked in every
    # other language both answered in it and tagged with the local language
    for region in FAMOUS:
        for attribute in FACT_TEMPLATES:
            q_local, a_local, _ = fact_qa(region, attribute, region.local)
            pairs += [(q_local, region.local, a_local)] * cfg.local_repeats
            for lang in LANGS:
                q, a, _ = fact_qa(region, attribute, lang)
                if lang != region.local:
                    pairs += [(q, lang, a), (q, region.local, a_local)]
    random.Random("famous").shuffle(pairs)   # (a second shuffle: the corpus of H1's world, exactly)
    return pairs


# ----------------------------------------------------------------------------------------------
# Scoring a response

def is_correct(example: Example, response: str) -> bool:
    """Regional: the gold value (in the example's language) appears as a word. Arithmetic: the
    last number in the response equals the answer. The response language is checked separately
    (the language-ID gate of calibrate.py), so a right name in a wrong language still counts here."""
    if example.topic == "arithmetic":
        numbers = re.findall(r"\d+", response)
        return bool(numbers) and float(numbers[-1]) == example.answer_number
    return contains_key(response, example.key)


# ----------------------------------------------------------------------------------------------
# Tokenizer and model

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 1536          # BPE vocabulary trained on the world
    padded_vocab: int = 64          # embedding rows rounded up to a multiple, like Qwen's 151936
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 256


@dataclass(frozen=True)
class WarmStartConfig:
    steps: int = 500
    batch_size: int = 48
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.01
    seed: int = 0


def train_tokenizer(cfg: WorldConfig = WorldConfig(), vocab_size: int = 1536):
    """A byte-level BPE tokenizer trained on the world, wrapped as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [t for q, lang, a in sft_pairs(cfg) for t in (q + "\n" + lang_tag(lang), a)]
    texts += [e.question + "\n" + e.answer for e in build_examples(cfg)]
    texts += [lang_tag(code) for code in LANGS] * 20 + ["user", "assistant", "system"] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE,
                                   padding_side="left")


def build_model(tokenizer, mcfg: ModelConfig = ModelConfig(), seed: int = 0):
    """A freshly initialised tiny Qwen2 (same class and API as Qwen2.5-1.5B-Instruct)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    # Leave unused embedding rows past the tokenizer, as Qwen does (151,936 rows for ~151,665
    # tokens), so the sampler's guard against sampling them is exercised here too.
    vocab = math.ceil((len(tokenizer) + 1) / mcfg.padded_vocab) * mcfg.padded_vocab
    config = Qwen2Config(
        vocab_size=vocab, hidden_size=mcfg.hidden_size, intermediate_size=mcfg.intermediate_size,
        num_hidden_layers=mcfg.num_hidden_layers, num_attention_heads=mcfg.num_attention_heads,
        num_key_value_heads=mcfg.num_key_value_heads,
        max_position_embeddings=mcfg.max_position_embeddings, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def encode_sft(tokenizer, pairs):
    """Token ids and a loss mask (answer + EOS only) for each (question, lang, answer)."""
    rows = []
    for question, lang, answer in pairs:
        prompt = tokenizer(build_prompt(tokenizer, question, lang), add_special_tokens=False)["input_ids"]
        target = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((prompt + target, [0] * len(prompt) + [1] * len(target)))
    return rows


def sft_loss(model, rows, pad_token_id: int):
    """Mean next-token loss over the masked (answer + EOS) tokens of ``encode_sft`` rows."""
    import torch
    import torch.nn.functional as F
    width = max(len(seq) for seq, _ in rows)
    # Right padding is fine for training: causal attention never looks at later pad tokens.
    ids = torch.full((len(rows), width), pad_token_id)
    mask = torch.zeros(len(rows), width)
    for r, (seq, m) in enumerate(rows):
        ids[r, :len(seq)] = torch.tensor(seq)
        mask[r, :len(seq)] = torch.tensor(m, dtype=torch.float)
    logits = model(input_ids=ids).logits[:, :-1]
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1),
                          reduction="none").view(len(rows), -1)
    return (nll * mask[:, 1:]).sum() / mask[:, 1:].sum()


PROGRESS_EVERY_S = 30   # warm-start progress lines at most this far apart


def warm_start(model, tokenizer, wcfg: WarmStartConfig, cfg: WorldConfig, log=print):
    """Supervised fine-tuning on the warm-start corpus (answer tokens only), AdamW + cosine.
    Returns the model and the training loss of every step."""
    import torch

    rows = encode_sft(tokenizer, sft_pairs(cfg))
    gen = torch.Generator().manual_seed(wcfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=wcfg.lr, weight_decay=wcfg.weight_decay,
                            betas=(0.9, 0.98))
    model.train()
    t0 = last_log = time.time()
    losses = []
    for step in range(wcfg.steps):
        lr = wcfg.lr * min(1.0, (step + 1) / wcfg.warmup) * 0.5 * (1 + math.cos(math.pi * step / wcfg.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(rows), (wcfg.batch_size,), generator=gen).tolist()
        loss = sft_loss(model, [rows[i] for i in idx], tokenizer.pad_token_id)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        # every 100 steps, and at least every 30 s on a slow or busy CPU
        if step % 100 == 0 or step == wcfg.steps - 1 or time.time() - last_log >= PROGRESS_EVERY_S:
            last_log = time.time()
            log(f"[toy] warm start step {step:4d}/{wcfg.steps}  loss {loss.item():.3f}  "
                f"({time.time() - t0:.0f}s)")
    model.eval()
    return model, losses


# ----------------------------------------------------------------------------------------------
# The shipped warm start, and the cache for every other configuration

# The default configuration's warm start ships in the repository (about 4 MB), so every machine
# starts from the same weights: trained again, 500 steps of SFT round differently on another CPU
# type, or on another day, and give another model (two version-3 builds: English arithmetic 0.22
# and 0.03; BENCHMARKS.md, issue 31).
# MANIFEST names the cache key it was trained for and the sha256 of each file; the files are loaded
# only when both match. Rebuild it (after changing the world or the default configs) with
#     python toy.py --rebuild-warm-start
SHIPPED_DIR = Path(__file__).resolve().parent / "warm_start" / "toy"
MANIFEST = "manifest.json"


def cache_dir() -> Path:
    return Path(os.environ.get("LRPO_CACHE", Path.home() / ".cache" / "lrpo"))


def _cache_key(cfg, mcfg, wcfg) -> str:
    # The world's own text is part of the key, so an edited region, fact or template (a classroom
    # exercise) trains a new warm start instead of reusing one that taught the old world.
    world = hashlib.sha256(json.dumps([sft_pairs(cfg), [asdict(e) for e in build_examples(cfg)]],
                                      ensure_ascii=False).encode()).hexdigest()
    blob = json.dumps({"version": WORLD_VERSION, "world": asdict(cfg), "model": asdict(mcfg),
                       "warm": asdict(wcfg), "text": world}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shipped_warm_start(key: str, log=print) -> Path | None:
    """SHIPPED_DIR if it holds the warm start of cache key ``key`` with every file's sha256 as
    its manifest says; None otherwise (another configuration, quietly; damaged files, with a line)."""
    try:
        manifest = json.loads((SHIPPED_DIR / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("key") != key:
        return None   # a non-default world, model or warm start: the cache serves it
    bad = [name for name, sha in manifest["sha256"].items()
           if not (SHIPPED_DIR / name).is_file() or _sha256(SHIPPED_DIR / name) != sha]
    if bad:
        log(f"[toy] the shipped warm start in {SHIPPED_DIR} fails its sha256 ({', '.join(bad)}): "
            f"training one into the cache instead")
        return None
    return SHIPPED_DIR


def build_warm_start(path: Path, cfg: WorldConfig, mcfg: ModelConfig, wcfg: WarmStartConfig,
                     log=print) -> None:
    """Train the tokenizer and the warm start and write them to ``path`` (atomically)."""
    import torch
    # One thread whatever the machine: a sum split over more threads rounds differently,
    # and 500 steps of SFT turn that into a different model (and different README numbers).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tokenizer = train_tokenizer(cfg, mcfg.vocab_size)
        model, _ = warm_start(build_model(tokenizer, mcfg, wcfg.seed), tokenizer, wcfg, cfg, log)
    finally:
        torch.set_num_threads(threads)
    # Write under a temporary name and rename, so an interrupted warm start leaves no
    # half-written folder behind.
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "done").write_text("ok\n")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def rebuild_shipped(log=print) -> Path:
    """``python toy.py --rebuild-warm-start``: train the default warm start into SHIPPED_DIR and
    write its manifest (cache key, sha256 of every file, the command)."""
    cfg, mcfg, wcfg = WorldConfig(), ModelConfig(), WarmStartConfig()
    SHIPPED_DIR.parent.mkdir(parents=True, exist_ok=True)
    build_warm_start(SHIPPED_DIR, cfg, mcfg, wcfg, log)
    (SHIPPED_DIR / "done").unlink()
    files = sorted(p.name for p in SHIPPED_DIR.iterdir() if p.name != MANIFEST)
    manifest = {"key": _cache_key(cfg, mcfg, wcfg), "world_version": WORLD_VERSION,
                "rebuild": "python toy.py --rebuild-warm-start",
                "sha256": {name: _sha256(SHIPPED_DIR / name) for name in files}}
    (SHIPPED_DIR / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    log(f"[toy] wrote {SHIPPED_DIR} (key {manifest['key']}, model.safetensors "
        f"{manifest['sha256']['model.safetensors'][:16]}…)")
    return SHIPPED_DIR


def load_model_and_tokenizer(device: str = "cpu", cfg: WorldConfig = WorldConfig(),
                             mcfg: ModelConfig = ModelConfig(),
                             wcfg: WarmStartConfig = WarmStartConfig(), log=print,
                             shipped: bool = True):
    """The warm-started tiny model and its tokenizer: the shipped copy when it is this
    configuration's (and ``shipped``), else from the cache, or trained and cached."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    key = _cache_key(cfg, mcfg, wcfg)
    path = shipped_warm_start(key, log) if shipped else None
    if path is None:
        path = cache_dir() / f"toy-{key}"
        if not (path / "done").exists():
            log(f"[toy] warm-starting the tiny model (cached afterwards in {path})")
            build_warm_start(path, cfg, mcfg, wcfg, log)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
    return model, tokenizer


# ----------------------------------------------------------------------------------------------
# How good is the warm start?

def greedy_answers(model, tokenizer, examples, target_langs, batch_size: int = 64,
                   max_new_tokens: int = 32) -> list[str]:
    """Greedy completions of each example's question, asked for an answer in ``target_langs``."""
    from extras.fast_rollout import generate
    prompts = [build_prompt(tokenizer, e.question, lang) for e, lang in zip(examples, target_langs)]
    return generate(model, tokenizer, prompts, max_new_tokens, batch_size=batch_size)


def accuracy_report(model, tokenizer, examples, detect_language=None) -> dict:
    """Accuracy per (topic, question language), answering in the question's own language and,
    for regional questions, in the region's local language (what the router can discover).

    ``detect_language`` (texts -> language codes) adds the share of answers in the requested
    language; without it, that column is left out.
    """
    local = {r.name: r.local for r in REGIONS}
    report = {}
    for mode in ("own", "local"):
        chosen = [e for e in examples if mode == "own" or e.topic == "regional"]
        targets = [e.lang if mode == "own" else local[e.region[0]] for e in chosen]
        answers = greedy_answers(model, tokenizer, chosen, targets)
        langs = detect_language(answers) if detect_language else [None] * len(answers)
        for e, target, answer, lang in zip(chosen, targets, answers, langs):
            # Score against the gold value in the language the answer was asked for.
            gold = e if mode == "own" else _example_in(e, target)
            topic = question_group(e)   # questions asked in the region's own language know more
            cell = report.setdefault(mode, {}).setdefault(topic, {}).setdefault(
                e.lang, {"n": 0, "correct": 0, "in_language": 0})
            cell["n"] += 1
            cell["correct"] += is_correct(gold, answer)
            cell["in_language"] += in_language(lang, target)
    for mode in report.values():
        for topic in mode.values():
            for cell in topic.values():
                cell["accuracy"] = cell["correct"] / cell["n"]
                cell["language_ok"] = cell["in_language"] / cell["n"] if detect_language else None
    return report


def _example_in(example: Example, lang: str) -> Example:
    region = next(r for r in REGIONS if r.name == example.region[0])
    attribute = example.id.split("-", 1)[1]
    q, a, key = fact_qa(region, attribute, lang)
    return Example(example.id, q, a, lang, example.topic, example.region, key=key)


def format_report(report: dict) -> str:
    lines = [f"{'answer':6s} {'topic':17s} " + " ".join(f"{l:>6s}" for l in LANGS) + "   mean"]
    for mode, topics in report.items():
        for topic, cells in topics.items():
            accs = [cells[l]["accuracy"] if l in cells else float("nan") for l in LANGS]
            mean = sum(cells[l]["correct"] for l in cells) / sum(cells[l]["n"] for l in cells)
            lines.append(f"{mode:6s} {topic:17s} " + " ".join(f"{a:6.2f}" for a in accs) + f"  {mean:5.2f}")
            if any(c["language_ok"] is not None for c in cells.values()):
                ok = [cells[l]["language_ok"] if l in cells else float("nan") for l in LANGS]
                lines.append(f"{'':6s} {'  answered in it':17s} " + " ".join(f"{a:6.2f}" for a in ok))
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(allow_abbrev=False, description="Build (or load from cache) the warm-started "
                                     "tiny model and print its accuracy on the built-in world.")
    parser.add_argument("--split", default="test", choices=["train", "test", "all"],
                        help="which split of the world to evaluate")
    parser.add_argument("--rebuild-warm-start", action="store_true",
                        help=f"train the default warm start again into {SHIPPED_DIR.parent.name}/"
                             f"{SHIPPED_DIR.name} (the shipped copy; one torch thread, minutes)")
    args = parser.parse_args()
    if args.rebuild_warm_start:
        rebuild_shipped()
    from calibrate import detect_languages   # the reward's language-ID gate
    model, tokenizer = load_model_and_tokenizer()
    print(format_report(accuracy_report(model, tokenizer, load_split(args.split), detect_languages)))
