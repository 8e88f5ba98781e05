"""FSDP on CPU processes: what torch can shard, and what accelerate does when asked (03_train, "Sharded training").

accelerate enables FSDP only on GPUs and other accelerators; on CPU processes `accelerate launch --use_fsdp` runs
DDP over gloo. torch's FSDP2 itself shards over gloo, so the library's model-facing parts are checked on a sharded
model directly (tests/fsdp_check.py), and the accelerate path is checked to warn and to match the DDP run.
"""
import json, os, subprocess, sys
from pathlib import Path
import pytest
from test_train import cli_files, ENV

HERE = Path(__file__).parent

def test_fully_sharded_model_gives_the_same_logps_gradients_and_samples():
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
                        str(HERE / "fsdp_check.py")], env=ENV, timeout=300, capture_output=True, text=True)
    assert r.returncode == 0, f"exit {r.returncode}\n--- stdout\n{r.stdout[-2000:]}\n--- stderr\n{r.stderr[-4000:]}"
    assert "FSDP OK 0" in r.stdout and "FSDP OK 1" in r.stdout

def _losses(out: Path) -> list[float]: return [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines()]

def test_accelerate_fsdp_on_cpu_warns_and_runs_as_ddp(tmp_path):
    d = cli_files(tmp_path)
    args = ["dpo", "--model", d / "tiny", "--dataset", d / "prefs.jsonl", "--max-steps", 3, "--batch-size", 4, "--lr", 5e-3,
            "--max-length", 32, "--quiet"]
    fsdp = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
            "--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer", "--main_process_port", "29562", "-m", "rlhf_nb.cli"]
    ddp = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29563", "-m", "rlhf_nb.cli"]
    runs = {}
    for name, launch in (("fsdp", fsdp), ("ddp", ddp)):
        r = subprocess.run([*launch, *map(str, args), "--output-dir", tmp_path / name], env=ENV, timeout=600, capture_output=True, text=True)
        assert r.returncode == 0, f"{name}: exit {r.returncode}\n--- stdout\n{r.stdout[-2000:]}\n--- stderr\n{r.stderr[-4000:]}"
        runs[name] = r
    assert "FSDP was requested" in runs["fsdp"].stderr and "MULTI_CPU" in runs["fsdp"].stderr
    assert "FSDP was requested" not in runs["ddp"].stderr
    assert _losses(tmp_path / "fsdp") == _losses(tmp_path / "ddp")         # the same run: accelerate did not shard
