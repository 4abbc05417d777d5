# Exploratory (docs/benchmarks_history.md, "the `famous` candidate world"): append to toy.py to
# turn the built-in world into transfer_probe.use_world("famous"), e.g.
# `cat bench/world_famous_patch.py >> toy.py` in a scratch copy, then
# `LRPO_CACHE=/tmp/famous python bench/classroom.py ...`. Not part of the default world.


# --- exploratory: the "famous" candidate world (bench/transfer_probe.py use_world("famous")) ---
_famous_rng = random.Random("famous-names")
_syllables = ["ka", "lo", "ver", "min", "tas", "ro", "bel", "dun", "sa", "ri", "mo", "tel", "van", "cor"]


def _famous_name():
    return "".join(_famous_rng.choice(_syllables) for _ in range(_famous_rng.choice((2, 3)))).capitalize()


FAMOUS = [Region(_famous_name(), lang, _famous_name(), _famous_name(), _famous_name(), _famous_rng.randint(1, 12))
          for lang in LANGS for _ in range(2)]
_base_sft_pairs = sft_pairs


def sft_pairs(cfg: WorldConfig = WorldConfig()):
    extra = []
    for region in FAMOUS:
        for attribute in FACT_TEMPLATES:
            q_local, a_local, _ = fact_qa(region, attribute, region.local)
            extra += [(q_local, region.local, a_local)] * cfg.local_repeats
            for lang in LANGS:
                q, a, _ = fact_qa(region, attribute, lang)
                if lang != region.local:
                    extra += [(q, lang, a), (q, region.local, a_local)]
    pairs = _base_sft_pairs(cfg) + extra
    random.Random("famous").shuffle(pairs)
    return pairs
