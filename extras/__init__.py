"""Everything that is *not* needed to understand LRPO: speed, extra routers, tools, adapters.

The paper's path is the top-level core (``lrpo.py`` → ``rollout.py``, ``calibrate.py``,
``bandit.py``, ``loss.py``, ``data.py``). The modules here plug into it through the same
interfaces; each one's docstring says what it adds and why.
"""
