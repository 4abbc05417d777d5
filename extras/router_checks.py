"""The router's options, checked once where a router is made (``bandit.make_router``,
``extras.routers.make_router``), so that bandit.py holds only the algorithm (paper §3.3).

Each bad option gets one error that names it: an unknown method or option, languages that are
empty or repeat, a topic list given as one string (("translation") without its comma would be a
set of letters), a normalisation or region rule that does not exist, a rate or schedule out of
range, or an English column a fixed mix needs but L lacks.
"""
from __future__ import annotations

import inspect

import bandit

TOPIC_OPTIONS = ("fixed_topics", "uniform_topics", "regional_topics")


def _ranges(o: dict) -> dict[str, bool]:
    return {"alpha": 0 < o["alpha"] <= 1, "update_every": int(o["update_every"]) >= 1,
            "tau0": o["tau0"] > 0, "tau_min": o["tau_min"] > 0,
            "tau_decay": 0 < o["tau_decay"] <= 1, "eps0": 0 <= o["eps0"] <= 1,
            "eps_min": 0 <= o["eps_min"] <= 1, "eps_decay": 0 < o["eps_decay"] <= 1,
            "norm_eps": o["norm_eps"] >= 0}


def check_common(method: str, cls: type, languages, options: dict) -> dict:
    """Languages, option names and topic lists, for any router class; returns every option of
    ``cls`` (its defaults, then ``options``)."""
    langs = [str(lang) for lang in languages]
    if not langs or len(set(langs)) != len(langs):
        raise ValueError(f"languages must be a non-empty list without repeats, got {languages!r}")
    params = inspect.signature(cls.__init__).parameters
    keyword = {k: p.default for k, p in params.items() if p.kind == p.KEYWORD_ONLY}
    if "options" in params:   # a subclass passing **options on: its parent's keywords count too
        keyword = {**check_common(method, cls.__mro__[1], languages, {}), **keyword}
    if unknown := sorted(set(options) - set(keyword)):
        raise TypeError(f"router {method!r}: unexpected option(s) {unknown} "
                        f"(see its class's options: {', '.join(keyword)})")
    for option in ("topic_prior", "region_prior"):
        for mix in (options.get(option) or {}).values():
            if unknown := set(mix) - set(langs):
                raise ValueError(f"a prior names languages {sorted(unknown)} outside {langs}")
    for option in TOPIC_OPTIONS:
        if isinstance(options.get(option), str):
            raise ValueError(f"{option} is a sequence of topic names, not one string: "
                             f"{options[option]!r}")
    return {**keyword, **options}


def check_router(method: str, languages, options: dict) -> None:
    """What ``bandit.make_router(method, languages, **options)`` needs, or one error."""
    if method not in bandit.METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(bandit.METHODS)}"
                         " (ucb, thompson: extras.routers.make_router)")
    cls = bandit.LanguageRouter if method == "lrpo" else bandit.FixedRouter
    o = check_common(method, cls, languages, options)
    if method != "lrpo":
        english = str(o["english"])
        if bandit.FIXED_MIXES[method] not in (None, 1.0) and english not in map(str, languages):
            raise ValueError(f"{method} router: english={english!r} is not among "
                             f"{[str(lang) for lang in languages]}")
        return
    if o["group_norm"] not in bandit.GROUP_NORMS:
        raise ValueError(f"group_norm must be one of {bandit.GROUP_NORMS}, "
                         f"got {o['group_norm']!r}")
    if o["region_rows"] not in bandit.REGION_ROWS:
        raise ValueError(f"region_rows must be one of {bandit.REGION_ROWS}, "
                         f"got {o['region_rows']!r}")
    for option, ok in _ranges(o).items():
        if not ok:
            raise ValueError(f"{method} router: option {option} is out of range")
