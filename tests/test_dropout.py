"""Dropout is off in every trained model by default, so at step 0 the policy equals its reference on a model built with
dropout: a GPT-2-architecture model (dropout 0.1 everywhere) with the real GPT-2 tokenizer."""
import math, os
from pathlib import Path
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from rlhf_nb.models import load_tokenizer
from rlhf_nb.train import TrainConfig
from rlhf_nb.dpo import dpo, DPOConfig
from rlhf_nb.ipo import ipo, IPOConfig
from rlhf_nb.kto import kto, KTOConfig

torch.set_num_threads(1)
GPT2_TOK = Path(__file__).resolve().parents[2] / "shared" / "realworld" / "tokenizers" / "gpt2"
pytestmark = pytest.mark.skipif(not GPT2_TOK.exists(), reason=f"real tokenizers not found at {GPT2_TOK} (../shared is "
                                "absent in a user's clone); these tests need the GPT-2 tokenizer files")
PAIRS = [{"prompt": f"Review of film {i}:", "chosen": " A wonderful film, I loved every minute.",
          "rejected": f" Dull{' and slow' * (i % 3)}."} for i in range(8)]


@pytest.fixture(scope="module")
def tok(): return load_tokenizer(str(GPT2_TOK))            # no pad token upstream: one is added, distinct from EOS


def gpt2(tok):
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128, resid_pdrop=0.1,
                     embd_pdrop=0.1, attn_pdrop=0.1, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return GPT2LMHeadModel(cfg)


def cfg(tmp_path, **kw):
    return TrainConfig(output_dir=str(tmp_path), max_steps=2, batch_size=4, lr=1e-3, progress=False, save_final=False, **kw)


def test_dpo_first_loss_is_log2(tmp_path, tok):
    first = dpo(gpt2(tok), tok, PAIRS, cfg(tmp_path), DPOConfig(beta=0.1, max_length=40)).history[0]
    assert abs(first["loss"] - math.log(2)) < 1e-6 and abs(first["rewards/margins"]) < 1e-6


def test_ipo_first_loss_at_h0(tmp_path, tok):
    tau = 0.1
    first = ipo(gpt2(tok), tok, PAIRS, cfg(tmp_path), IPOConfig(tau=tau, max_length=40)).history[0]
    assert abs(first["loss"] - (1 / (2 * tau)) ** 2) < 1e-6 * (1 / (2 * tau)) ** 2


def test_kto_first_reference_point_is_0(tmp_path, tok):
    first = kto(gpt2(tok), tok, PAIRS, cfg(tmp_path), KTOConfig(beta=0.1, max_length=40)).history[0]
    assert first["kl"] == 0 and abs(first["loss"] - 0.5) < 1e-6   # every reward 0: each row's loss is λ/2 = 0.5


def test_dropout_kept_when_asked(tmp_path, tok):
    first = dpo(gpt2(tok), tok, PAIRS, cfg(tmp_path, disable_dropout=False), DPOConfig(beta=0.1, max_length=40)).history[0]
    assert abs(first["loss"] - math.log(2)) > 1e-4                 # the policy's dropout makes h ≠ 0 at step 0
