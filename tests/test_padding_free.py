"""Padding-free batches end to end: a few SFT, DPO and KTO steps on rows of heavy-tailed lengths give the losses of
the padded batches, the setting reaches the command line and YAML files, and a mask with a hole is refused."""
import os, subprocess, sys
import pytest
import torch
import rlhf_nb.core as core
from rlhf_nb.core import response_logps
from rlhf_nb.models import tiny_tokenizer, tiny_llama
from rlhf_nb.train import TrainConfig
from rlhf_nb.sft import sft, SFTConfig
from rlhf_nb.dpo_trainer import dpo, DPOConfig
from rlhf_nb.kto import kto, KTOConfig

torch.set_num_threads(1)
WORDS = ["good", "great", "fun", "lovely", "bad", "dull", "weak", "awful"]
LENGTHS = [1, 1, 1, 2, 2, 3, 4, 6, 9, 40, 1, 2, 1, 3, 25, 1]             # heavy-tailed: most short, a few long

def words(i: int, n: int) -> str: return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(n))

SFT_ROWS = [{"prompt": f"Film {i} was", "completion": " " + words(i, n) + "."} for i, n in enumerate(LENGTHS)]
PAIRS = [{"prompt": f"Film {i} was", "chosen": " " + words(i, n) + ".", "rejected": " " + words(i + 3, LENGTHS[-1 - i]) + "."}
         for i, n in enumerate(LENGTHS)]

@pytest.fixture(scope="module")
def tok(): return tiny_tokenizer()

@pytest.fixture
def packed_calls(monkeypatch):
    "Whether each packed forward ran with gradients (policy) or without (reference, precompute), in order."
    calls, real = [], core._packed_scores
    def spy(*a, **k): calls.append(torch.is_grad_enabled()); return real(*a, **k)
    monkeypatch.setattr(core, "_packed_scores", spy)
    return calls

def losses(history) -> list[float]: return [h["loss"] for h in history if "loss" in h]

def run(fn, tok, tmp_path, rows, cfg, steps=4, **train):
    "Train a fresh tiny model for `steps` steps and return its per-step losses."
    config = TrainConfig(output_dir=str(tmp_path), max_steps=steps, batch_size=8, lr=1e-3, seed=0, progress=False,
                         save_final=False, **train)
    return losses(fn(tiny_llama(tok, seed=0), tok, rows, config, cfg).history)

def same(a: list[float], b: list[float]):
    assert len(a) == len(b) > 0
    assert a == pytest.approx(b, rel=1e-5, abs=1e-6)

def test_padded_rows_really_are_heavy_tailed(tok):
    n = [len(tok(r["prompt"] + r["completion"]).input_ids) for r in SFT_ROWS]
    assert max(n) >= 4 * sorted(n)[len(n) // 2]                           # the longest row is several times the median

def test_sft_losses_match(tok, tmp_path, packed_calls):
    base = run(sft, tok, tmp_path / "a", SFT_ROWS, SFTConfig())
    assert packed_calls == []                                              # the default is the padded path
    same(run(sft, tok, tmp_path / "b", SFT_ROWS, SFTConfig(padding_free=True)), base)
    assert packed_calls == [True] * 4                                      # every step's forward was packed
    assert base[-1] < base[0]                                              # it trains: the steps are not a no-op
    tok_base = run(sft, tok, tmp_path / "c", SFT_ROWS, SFTConfig(loss_per="token"))
    same(run(sft, tok, tmp_path / "d", SFT_ROWS, SFTConfig(loss_per="token", padding_free=True)), tok_base)

@pytest.mark.parametrize("precompute", [False, True])
def test_dpo_losses_match(tok, tmp_path, precompute, packed_calls):
    base = run(dpo, tok, tmp_path / "a", PAIRS, DPOConfig(precompute_ref=precompute))
    assert packed_calls == []
    same(run(dpo, tok, tmp_path / "b", PAIRS, DPOConfig(precompute_ref=precompute, padding_free=True)), base)
    # the reference pass is packed too: 2 no-grad batches before training (16 pairs), or one per step
    assert packed_calls == ([False] * 2 + [True] * 4 if precompute else [False, True] * 4)
    assert len(set(base)) > 1                                              # the policy moves away from its reference

def test_kto_losses_match(tok, tmp_path, packed_calls):
    base = run(kto, tok, tmp_path / "a", PAIRS, KTOConfig(), steps=3)
    assert packed_calls == []
    same(run(kto, tok, tmp_path / "b", PAIRS, KTOConfig(padding_free=True), steps=3), base)
    assert packed_calls.count(True) == 3 and packed_calls.count(False) >= 6  # policy; reference and mismatched pairs

def test_a_mask_with_a_hole_is_refused(tok):
    ids = torch.randint(3, len(tok), (2, 6)); am = torch.ones(2, 6, dtype=torch.long); am[0, 2] = 0
    labels = ids.masked_fill(am == 0, -100)
    with pytest.raises(ValueError, match="padding_free needs each row's attention_mask 1s to be one contiguous block"):
        response_logps(tiny_llama(tok), ids, am, labels, padding_free=True)

@pytest.mark.parametrize("command", ["sft", "dpo", "kto", "ipo", "simpo", "orpo"])
def test_the_command_line_and_yaml_take_it(command, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = lambda *a: subprocess.run([sys.executable, "-m", "rlhf_nb.cli", command, *a], env=env, capture_output=True, text=True, timeout=300)
    assert "--padding-free" in cli("--help").stdout
    (tmp_path / "c.yaml").write_text("padding_free: true\n")
    assert "padding_free: true" in cli("--config", str(tmp_path / "c.yaml"), "--print-config").stdout
    assert "padding_free: false" in cli("--print-config").stdout
