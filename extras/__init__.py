"""Everything that is *not* needed to understand LRPO: speed, extra routers, tools, adapters.

The paper's path is the top-level core (``lrpo.py`` → ``rollout.py``, ``calibrate.py``,
``bandit.py``, ``loss.py``, ``data.py``). The modules here plug into it through the same
interfaces; each one's docstring says what it adds and why:

    fast_rollout.py     rollout.sample's CUDA-graph twin (fused, compiled, bucketed); batched generate
    any_model.py        rollout.sample for any transformers model (Gemma 3), and its argument checks
    fast_training.py    bf16 training with float32 master weights and gradients; compiled layers
    models.py           the one model loader (toy, hub id, local folder, GGUF)
    encoders.py         sentence encoders behind calibrate.Encoder (offline e5, any HF encoder)
    language_id.py      fastText lid.176 behind calibrate.LanguageID (official top-1, our rules)
    pair_stats.py       pair statistics for calibration: the offline builder and CLI, the file reader
    fast_reward.py      calibrate.RewardScorer from flags and files, with cache, lock and timings
    verifier.py         a numeric-answer reward (GSM8K/mGSM-style data)
    routers.py          discounted UCB and Thompson sampling (beyond the paper)
    router_log.py       the router's per-step JSONL log (contexts and table rows)
    plots.py            the router heatmap (the paper's Fig. 3a)
    runlog.py           the run folder: JSONL logs, resume, flag checks, plots
    checkpoints.py      checkpoints: written whole, the last N kept, checked and set aside on load
    run_lock.py         one process per run folder
    run_io.py           atomic writes of the run folder's files, the logs, one-line errors
    endpoints.py        OpenAI-compatible URLs: the one redaction of their secrets, their checks
    recipes.py          loading: files, official formats, hub ids, recipes; the prompt-length filter
    label.py            the paper's topic/region labelling of a data file (App. A.2), with an LLM
    warm_start.py       the paper's warm-start SFT (§5.4) and the tag-following check
    benchmarks.py       what each evaluation benchmark is (evaluate.py runs them)
    reward_adapters.py  the LRPO reward for TRL's GRPOTrainer and verl
    interrupt.py        Ctrl-C in any command: one line, exit code 130 (not a traceback)
"""
