"""Issue 18: the paper's step through lrpo.py's own loop (bench/paper_step.py) and the rollout's
memory sizing that made step 2's rollout 2.5x slower than step 1's."""
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("n,most,expected", [(2048, 1500, 1024), (2048, 2048, 2048), (2048, 4096, 2048),
                                             (2048, 700, 683), (10, 3, 3), (7, 1, 1), (5, 2, 2)])
def test_rollout_chunks_are_equal(n, most, expected):
    """The fewest calls of at most `most` rows, as equal as possible (each call lasts as long as
    its longest rollout): 2,048 rows that fit 1,500 at a time run as 1,024 + 1,024."""
    from extras.fast_rollout import equal_chunks
    rows = equal_chunks(n, most)
    assert rows == expected and rows <= most
    assert -(-n // rows) == -(-n // most)   # no more calls than needed


def test_rows_that_fit_count_what_the_allocator_caches_as_free(monkeypatch):
    """After the update PyTorch's allocator keeps tens of GB cached: that memory is free for the
    KV cache. Counting only the driver's free memory gave step 2 a third of step 1's rows."""
    from extras import fast_rollout
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (10 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda: 50 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 20 * gib)
    config = SimpleNamespace(num_hidden_layers=28, num_key_value_heads=2, hidden_size=1536,
                             num_attention_heads=12)
    weight = torch.empty(151936, 1, dtype=torch.bfloat16)
    model = SimpleNamespace(config=config, parameters=lambda: iter([weight]),
                            get_output_embeddings=lambda: SimpleNamespace(weight=weight))
    per_row = 2 * 28 * 2 * 128 * (100 + 1024) * 2 + 4 * 4 * 151936
    assert fast_rollout.rows_that_fit(model, 100, 1024) == int(0.6 * 40 * gib // per_row)


def test_paper_step_smoke_runs_lrpos_loop(tmp_path):
    """`python bench/paper_step.py --smoke`: lrpo.main on a tiny model, four steps, one row each,
    with the phases' seconds and token counts read back from the run's own metrics.jsonl."""
    out = subprocess.run([sys.executable, "bench/paper_step.py", "--smoke", "--work", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert [s["step"] for s in result["steps"]] == [1, 2, 3, 4]
    for s in result["steps"]:
        assert s["skipped_steps"] == 0 and s["tokens"] > 0
        assert s["update_s"] >= s["reference_s"] + s["forward_backward_s"]   # the fast update's parts
        assert s["step_s"] >= s["rollout_s"] + s["reward_s"] + s["update_s"] - 1e-6
    metrics = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["tokens"] for m in metrics] == [s["tokens"] for s in result["steps"]]


def test_paper_step_diagnose_probes_the_runs_training_passes(tmp_path):
    """`--diagnose` watches the log-prob function the run really calls (the fast update calls it
    directly, not through lrpo.completion_logprobs): its probes must see the training passes."""
    out = subprocess.run([sys.executable, "bench/paper_step.py", "--smoke", "--diagnose", "--steps", "2",
                          "--work", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["non_finite"] == []
    assert result["probed"]["grad passes"] >= 2 and result["probed"]["no-grad passes"] >= 2


def test_update_paths_smoke_times_both_heads_on_the_same_rows():
    """`python bench/update_paths.py --smoke`: the training pass and the reference's passes with
    the head's element-wise passes eager and compiled, each pair over the same real tokens (the
    comparison is fair)."""
    out = subprocess.run([sys.executable, "bench/update_paths.py", "--smoke", "--repeats", "1", "--loop"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for part in ("train micro-batch (8 rows)", "reference (128 rows)"):
        eager, compiled = (result[f"{part}, head {how}"] for how in ("eager (as at f932e01)", "compiled (now)"))
        assert eager["real_tokens"] == compiled["real_tokens"] > 0
    assert all(result[k]["s"] > 0 for k in result if isinstance(result[k], dict) and k != "loop")
    # --loop: lrpo's own update, fixed passes and token-budget passes, over the same rows
    loop = result["loop"]
    for variant in ("policy_update, float32 masters, passes of 8 rows", "policy_update, float32 masters (as lrpo)"):
        assert loop[variant]["time/update_forward_backward"] > 0
