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
    subprocess.run([sys.executable, SCRIPT, str(tmp_path / "one"), "8", "10"], check=True, env=ENV, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
                    SCRIPT, str(tmp_path / "two"), "4", "10"], check=True, env=ENV, timeout=300)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 10
    assert one[-1] < one[0] * 0.8                                  # it trained
    # fp32 reductions in another order: 1e-4 relative is ~100x the single-step rounding, far below a real mismatch
    assert two == pytest.approx(one, rel=1e-4)
    assert (tmp_path / "two" / "final" / "config.json").exists()

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
