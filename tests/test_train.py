"What the 03_train notebook can't show: two processes, and a real SIGKILL during training."
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest

SCRIPT = str(Path(__file__).parent / "tiny_lm_run.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

def losses(out): return [json.loads(l)["loss"] for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]

def test_two_processes_match_one(tmp_path):
    # One process with batch 8 vs two processes (gloo, torchrun) with 4 each: the same 8 rows per step, and the
    # per-row mean losses average to the same global mean, so the runs differ only by float summation order.
    # Both evaluate 7 held-out rows every 5 steps: two processes split them 4 + 3 (batches of 2, a stand-in at weight
    # 0 so both run two batches), and must report the mean over the 7 rows, as one process does.
    subprocess.run([sys.executable, SCRIPT, str(tmp_path / "one"), "8", "10", "0", "-", "0", "eval"], check=True, env=ENV, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
                    SCRIPT, str(tmp_path / "two"), "4", "10", "0", "-", "0", "eval"], check=True, env=ENV, timeout=300)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 10
    assert one[-1] < one[0] * 0.8                                  # it trained
    # fp32 reductions in another order: 1e-4 relative is ~100x the single-step rounding, far below a real mismatch
    assert two == pytest.approx(one, rel=1e-4)
    assert (tmp_path / "two" / "final" / "config.json").exists()
    ev = lambda out: [(r["step"], r["eval/loss"]) for r in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines()) if "eval/loss" in r]
    e1, e2 = ev(tmp_path / "one"), ev(tmp_path / "two")
    assert [s for s, _ in e1] == [s for s, _ in e2] == [5, 10]
    assert [l for _, l in e2] == pytest.approx([l for _, l in e1], rel=1e-4)

def test_sigkill_leaves_a_resumable_checkpoint(tmp_path):
    out = tmp_path / "run"
    # slow steps so the kill lands mid-run; checkpoint every step
    p = subprocess.Popen([sys.executable, SCRIPT, str(out), "8", "30", "1", "-", "0.15"], env=ENV)
    ckpts = out / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(ckpts.glob("step-*"))) < 1: time.sleep(0.1)
    time.sleep(0.5)
    p.send_signal(signal.SIGKILL); p.wait()
    done = [c for c in ckpts.glob("step-*") if (c / "trainer_state.json").exists()]
    assert done, "no complete checkpoint before the kill"
    last = max(int(c.name.split("-")[1]) for c in done)
    assert last < 30
    subprocess.run([sys.executable, SCRIPT, str(out), "8", "30", "0", "latest"], check=True, env=ENV, timeout=300)
    resumed = losses(out)
    subprocess.run([sys.executable, SCRIPT, str(tmp_path / "ref"), "8", "30"], check=True, env=ENV, timeout=300)
    assert resumed == losses(tmp_path / "ref")                      # bit-identical on CPU


# --- KTO and evaluation on two processes, through the command line ---------------------------------------------------

def cli_files(d: Path) -> Path:
    "A saved tiny model and a small preference file in `d`."
    from rlhf_nb.models import tiny_tokenizer, tiny_llama
    tok = tiny_tokenizer(); tiny_llama(tok).save_pretrained(d / "tiny"); tok.save_pretrained(d / "tiny")
    good, bad = ["good", "great", "fun", "lovely"], ["bad", "dull", "weak", "awful"]
    rows = [{"prompt": f"Film {i} was", "chosen": f" {good[i % 4]} and {'really ' * (i % 3)}{good[(i + 1) % 4]}.", "rejected": f" {bad[i % 4]}."}
            for i in range(20)]
    (d / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d

def cli(out, procs: int, *args, port: int = 29541):
    "`rlhf_nb ...` on one process, or on `procs` processes under torchrun; returns the CompletedProcess."
    launch = [sys.executable, "-m", "rlhf_nb.cli"] if procs == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port", str(port), "-m", "rlhf_nb.cli"]
    r = subprocess.run([*launch, *map(str, args), "--output-dir", out, "--quiet"], env=ENV, timeout=600, capture_output=True, text=True)
    assert r.returncode == 0, f"exit {r.returncode}\n--- stdout\n{r.stdout[-2000:]}\n--- stderr\n{r.stderr[-4000:]}"
    return r

def test_kto_two_processes_match_one(tmp_path):
    # ẑ₀ is one number per step over both processes, and the mismatched pairs are fixed per row: 2 × 4 rows on two
    # processes is the same optimisation as 8 rows on one. (Clamped per process, or paired inside each process's
    # batch, the two runs would differ.)
    d = cli_files(tmp_path)
    common = ["kto", "--model", d / "tiny", "--dataset", d / "prefs.jsonl", "--max-steps", 6, "--lr", 5e-3,
              "--max-length", 32, "--beta", 0.5]
    cli(tmp_path / "one", 1, *common, "--batch-size", 8)
    cli(tmp_path / "two", 2, *common, "--batch-size", 4, port=29542)
    read = lambda out: [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    one, two = read(tmp_path / "one"), read(tmp_path / "two")
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-4)
    assert [r["kl"] for r in two] == pytest.approx([r["kl"] for r in one], rel=1e-4, abs=1e-7)
    assert one[-1]["kl"] > 0                                           # the policy moved: ẑ₀ is no longer 0

def test_evaluation_runs_once_on_two_processes(tmp_path):
    d = cli_files(tmp_path)
    r = cli(tmp_path / "dpo", 2, "dpo", "--model", d / "tiny", "--dataset", d / "prefs.jsonl", "--eval-dataset",
            d / "prefs.jsonl", "--max-steps", 2, "--batch-size", 4, "--max-length", 32, port=29543)
    summaries = [l for l in r.stdout.splitlines() if l.startswith("{")]
    assert len(summaries) == 1, r.stdout                               # one summary, from the main process
    ev = json.loads((tmp_path / "dpo" / "eval.json").read_text())
    assert 0 <= ev["eval/rewards/accuracies"] <= 1
