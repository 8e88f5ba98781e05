"""Shared-prompt pairs (one row per pair, prompt | chosen | rejected) give the log-probs and gradients of the padded
(2B, T) batch: per token in float64, on Llama and Qwen2, sdpa and eager, the response-only head and the full logits,
fp32 and LoRA; a DPO run and the precomputed reference match the padded runs; the setting reaches the command line and
YAML; bad input is refused by name."""
import copy, math
from pathlib import Path
import pytest
import torch
import rlhf_nb.core as core
import rlhf_nb.dpo_trainer as dt
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm
from rlhf_nb.core import response_logps
from rlhf_nb.models import tiny_tokenizer, tiny_llama, add_lora
from rlhf_nb.data import tokenize_preferences, PreferenceCollator
from rlhf_nb.train import TrainConfig
from rlhf_nb.dpo_trainer import (SharedPromptCollator, concatenated_logps, shared_prompt_logps, shared_prompt_mask, dpo, DPOConfig,
                                 evaluate_preferences, precompute_reference_logps, _source_logps)
from rlhf_nb.simpo import simpo, SimPOConfig
from rlhf_nb.cli import main

torch.set_num_threads(1)
WORDS = ["good", "great", "fun", "lovely", "bad", "dull", "weak", "awful"]
LENGTHS = [1, 1, 2, 1, 3, 40, 2, 1, 9, 25, 1, 4]                         # heavy-tailed: most short, a few long

def words(i: int, n: int) -> str: return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(n))

# prompts of 1 to 12 words; chosen longer than rejected in some pairs, shorter in others
PAIRS = [{"prompt": f"Film {i} was " + words(i + 1, 1 + (7 * i) % 12), "chosen": " " + words(i, n) + ".",
          "rejected": " " + words(i + 3, LENGTHS[-1 - i]) + "."} for i, n in enumerate(LENGTHS)]

@pytest.fixture(scope="module")
def tok(): return tiny_tokenizer()

@pytest.fixture(scope="module")
def ds(tok): return tokenize_preferences(PAIRS, tok, max_length=128)[0]

def qwen2(tok):
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, pad_token_id=tok.pad_token_id)            # grouped-query attention
    torch.manual_seed(0); return Qwen2ForCausalLM(cfg)

def batches(tok, rows):
    return PreferenceCollator(tok.pad_token_id)(rows), SharedPromptCollator(tok.pad_token_id)(rows)

def per_token_padded(m, pb):
    "The padded path's per-token log-probs in the order a shared batch scores them: pair by pair, chosen then rejected."
    lp, keep = response_logps(m, pb["input_ids"], pb["attention_mask"], pb["labels"], use_cache=False), pb["labels"][:, 1:] != -100
    B = len(lp) // 2
    return torch.cat([torch.cat((lp[i][keep[i]], lp[B + i][keep[B + i]])) for i in range(B)])

def per_token_shared(m, sb):
    y = sb["labels"]; b, t = (y != -100).nonzero(as_tuple=True)
    return _source_logps(m, sb, b, sb["sources"][b, t], y[b, t], chunk_tokens=5)

def grads(m, logps_fn, batch):
    "Log-probs (B,), (B,) and the gradient of every parameter of a pair-weighted sum (a mix-up of pairs or halves would show)."
    c, r = logps_fn(m, batch)
    w = torch.arange(1., len(c) + 1, dtype=c.dtype)
    return torch.stack((c, r)).detach().double(), torch.autograd.grad((w * c - 0.5 * w * r).sum(), [p for p in m.parameters() if p.requires_grad])

padded = lambda m, b: concatenated_logps(m, b)
shared = lambda m, b: concatenated_logps(m, b, shared_prompt=True)

def test_layout_by_hand():
    row = {"chosen_input_ids": [5, 6, 7, 8, 9], "chosen_labels": [-100, -100, -100, 8, 9],
           "rejected_input_ids": [5, 6, 7, 10, 11, 12, 13], "rejected_labels": [-100, -100, -100, 10, 11, 12, 13], "score": 0.5}
    b = SharedPromptCollator(0)([row, dict(row, chosen_input_ids=[5, 6, 7, 3], chosen_labels=[-100, -100, -100, 3])])
    test = lambda k: b[k][0].tolist()
    assert test("input_ids") == [5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert test("position_ids") == [0, 1, 2, 3, 4, 3, 4, 5, 6]                 # the rejected response restarts at P = 3
    assert test("segments") == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert test("labels") == [-100, -100, -100, 8, 9, 10, 11, 12, 13]
    assert test("sources") == [0, 0, 0, 2, 3, 2, 5, 6, 7]                      # the first rejected token: the prompt's last
    assert b["segments"][1].tolist() == [0, 0, 0, 1, 2, 2, 2, 2, -1]         # the shorter pair is padded
    assert b["score"].tolist() == [0.5, 0.5]                                   # numeric columns pass through, (B,)
    mask, seg = b["attention_mask"][0, 0], test("segments")
    for q in range(9):                                                         # the rule, one entry at a time
        for k in range(9):
            want = k <= q and (seg[k] == 0 or seg[k] == seg[q])
            assert bool(mask[q, k]) == want, (q, k)
    pad = b["attention_mask"][1, 0, 8]
    assert pad.tolist() == [False] * 8 + [True]                                # padding sees padding only

def norm_in_input_dtype(self, h):
    "RMSNorm computed in the dtype of its input (the stock one computes in fp32, also for a float64 model)."
    return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_float64_exact(tok, ds, arch, attn, monkeypatch):
    # Llama's and Qwen2's RMSNorm compute in fp32 even in a float64 model. The shared prompt's positions receive the
    # chosen and the rejected gradient summed *before* the norm's backward, the padded rows after it, so with the stock
    # norm the gradients agree to fp32 rounding only (checked at the end); with the norm in float64, to 1e-10.
    for cls in (LlamaRMSNorm, Qwen2RMSNorm): monkeypatch.setattr(cls, "forward", norm_in_input_dtype)
    m = (tiny_llama(tok, tie_word_embeddings=False) if arch == "llama" else qwen2(tok)).double()
    m.config._attn_implementation = attn
    pb, sb = batches(tok, list(ds))
    assert sb["input_ids"].numel() < 0.7 * pb["input_ids"].numel()            # the prompt once, less padding
    with torch.no_grad(): a, b = per_token_shared(m, sb), per_token_padded(m, pb)
    assert len(a) == len(b) == (pb["labels"][:, 1:] != -100).sum()
    tol = 1e-10 if attn == "sdpa" else 1e-7                                    # eager takes its softmax in fp32
    # per token, at the padded path's precision (eager: a last-bit flip of an fp32 value, ~5e-7, is allowed)
    torch.testing.assert_close(a.to(b.dtype), b, rtol=0, atol=tol if attn == "sdpa" else 1e-6)
    (x, gx), (y, gy) = grads(m, shared, sb), grads(m, padded, pb)
    torch.testing.assert_close(x, y, rtol=1e-6, atol=0)                        # sums: fp32, another order of addition
    for p, q in zip(gx, gy): torch.testing.assert_close(p, q, rtol=0, atol=tol * (1 + q.abs().max().item()))
    c_avg, r_avg = concatenated_logps(m, sb, average=True, shared_prompt=True)
    n = (pb["labels"][:, 1:] != -100).sum(-1)
    torch.testing.assert_close(torch.stack((c_avg, r_avg)).detach().double(), y / n.view(2, -1), rtol=1e-6, atol=0)
    monkeypatch.undo()                                                         # the stock fp32 norm: fp32 tolerance
    (x, gx), (y, gy) = grads(m, shared, sb), grads(m, padded, pb)
    for p, q in zip(gx, gy): torch.testing.assert_close(p, q, rtol=0, atol=1e-7 * (1 + q.abs().max().item()))

def test_full_logits_fallback(tok, ds, monkeypatch):
    monkeypatch.setattr(LlamaRMSNorm, "forward", norm_in_input_dtype)
    m = tiny_llama(tok, tie_word_embeddings=False).double()
    pb, sb = batches(tok, list(ds)[:6])
    monkeypatch.setattr(core, "USE_RESPONSE_LOGITS", False)
    assert core.full_logits_reason(m) is not None
    calls = []
    real = m.forward
    monkeypatch.setattr(m, "forward", lambda *a, **k: calls.append(k.get("logits_to_keep", 0)) or real(*a, **k))
    (x, gx), (y, gy) = grads(m, shared, sb), grads(m, padded, pb)
    assert calls[0] == 0                                                       # the full logits, not logits_to_keep=1
    torch.testing.assert_close(x, y, rtol=1e-6, atol=0)
    for p, q in zip(gx, gy): torch.testing.assert_close(p, q, rtol=0, atol=1e-10 * (1 + q.abs().max().item()))

def test_fp32_and_lora(tok, ds):
    pb, sb = batches(tok, list(ds))
    m32 = tiny_llama(tok, seed=1)                                              # fp32, tied embeddings
    torch.manual_seed(0)
    lora = add_lora(copy.deepcopy(m32), r=4)
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n: p.normal_(0, 0.05)                               # adapters away from zero: they matter
    for m in (m32, lora):
        (x, gx), (y, gy) = grads(m, shared, sb), grads(m, padded, pb)
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-4)
        names = [n for n, p in m.named_parameters() if p.requires_grad]
        assert len(gx) == len(names) > 0
        for p, q in zip(gx, gy): torch.testing.assert_close(p, q, rtol=0, atol=2e-5 * (1 + q.abs().max().item()))
    assert (concatenated_logps(lora, sb, shared_prompt=True)[0] - concatenated_logps(m32, sb, shared_prompt=True)[0]).abs().max() > 0.1

def test_no_common_prompt(tok):
    "P = 0: nothing is shared, and the first token of each response is unscored, as in a padded row (no token predicts it)."
    rows = [{"chosen_input_ids": [5, 6, 7], "chosen_labels": [5, 6, 7], "rejected_input_ids": [8, 9, 10, 11], "rejected_labels": [8, 9, 10, 11]},
            {"chosen_input_ids": [5, 6, 12], "chosen_labels": [-100, 6, 12], "rejected_input_ids": [5, 9], "rejected_labels": [5, 9]}]
    pb, sb = batches(tok, rows)
    assert sb["segments"][0].tolist() == [1, 1, 1, 2, 2, 2, 2] and sb["labels"][0, [0, 3]].tolist() == [-100, -100]
    assert sb["segments"][1, :4].tolist() == [1, 1, 1, 2]                    # the same first id, but scored in one: no prompt
    m = tiny_llama(tok, tie_word_embeddings=False).double()
    (x, gx), (y, gy) = grads(m, shared, sb), grads(m, padded, pb)
    torch.testing.assert_close(x, y, rtol=1e-6, atol=0)
    for p, q in zip(gx, gy): torch.testing.assert_close(p, q, rtol=0, atol=1e-10 * (1 + q.abs().max().item()))

TOKENIZERS = Path(__file__).resolve().parents[2] / "shared" / "realworld" / "tokenizers"

@pytest.mark.skipif(not TOKENIZERS.exists(), reason=f"real tokenizers not found at {TOKENIZERS}: ../shared is absent")
@pytest.mark.parametrize("name", ["qwen2.5-instruct", "llama-3.1-instruct"])
def test_real_chat_templates_share_the_whole_prompt(name):
    "tokenize_preferences encodes the prompt once: P is every unscored token, the assistant header included."
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(TOKENIZERS / name)
    if tok.pad_token is None: tok.pad_token = tok.eos_token
    rows = [{"prompt": [{"role": "user", "content": "Name a colour."}], "chosen": [{"role": "assistant", "content": "Blue."}],
             "rejected": [{"role": "assistant", "content": "A dog."}]}]
    r = tokenize_preferences(rows, tok, max_length=64)[0][0]
    P = dt._shared_prefix(r)
    assert P == r["chosen_labels"].count(-100) == r["rejected_labels"].count(-100) > 10
    assert tok.decode(r["chosen_input_ids"][P:]).startswith("Blue.") and tok.decode(r["rejected_input_ids"][P:]).startswith("A dog.")

@pytest.fixture
def shared_calls(monkeypatch):
    "Whether each shared-prompt scoring ran with gradients (policy) or without (reference, precompute), in order."
    calls, real = [], dt.shared_prompt_logps
    def spy(*a, **k): calls.append(torch.is_grad_enabled()); return real(*a, **k)
    monkeypatch.setattr(dt, "shared_prompt_logps", spy)
    return calls

def run(fn, tok, tmp_path, cfg, steps=4):
    config = TrainConfig(output_dir=str(tmp_path), max_steps=steps, batch_size=6, lr=1e-3, seed=0, progress=False, save_final=False)
    return [h["loss"] for h in fn(tiny_llama(tok, seed=0), tok, PAIRS, config, cfg).history if "loss" in h]

@pytest.mark.parametrize("precompute", [False, True])
def test_dpo_losses_match(tok, tmp_path, precompute, shared_calls):
    base = run(dpo, tok, tmp_path / "a", DPOConfig(precompute_ref=precompute, max_length=128))
    assert shared_calls == []                                                  # the default is the padded layout
    got = run(dpo, tok, tmp_path / "b", DPOConfig(precompute_ref=precompute, max_length=128, shared_prompt=True))
    assert got == pytest.approx(base, rel=1e-5, abs=1e-6) and len(base) == 4
    assert shared_calls == ([False] * 2 + [True] * 4 if precompute else [False, True] * 4)   # the reference is shared too
    assert len(set(base)) > 1 and math.isclose(base[0], math.log(2), rel_tol=1e-5)         # it trains

def test_precomputed_reference_and_evaluation(tok, ds):
    m = tiny_llama(tok, seed=2)
    a = precompute_reference_logps(m, ds, tok.pad_token_id, batch_size=5, progress=False)
    b = precompute_reference_logps(m, ds, tok.pad_token_id, batch_size=5, progress=False, shared_prompt=True)
    for c in ("ref_chosen_logps", "ref_rejected_logps"): assert b[c] == pytest.approx(a[c], rel=1e-5)
    pol = tiny_llama(tok, seed=3)
    ea = evaluate_preferences(pol, a, tok.pad_token_id, beta=0.1)
    eb = evaluate_preferences(pol, b, tok.pad_token_id, beta=0.1, shared_prompt=True)
    # rewards are β·(policy − ref) of fp32 sums of ~100 log-probs added in another order: absolute fp32 tolerance
    assert eb == pytest.approx(ea, rel=1e-5, abs=2e-5) and abs(ea["rewards/margins"]) > 1e-3

def test_simpo_losses_match(tok, tmp_path):
    base = run(simpo, tok, tmp_path / "a", SimPOConfig(max_length=128), steps=2)
    assert run(simpo, tok, tmp_path / "b", SimPOConfig(max_length=128, shared_prompt=True), steps=2) == pytest.approx(base, rel=1e-5)

@pytest.mark.parametrize("command", ["dpo", "ipo", "simpo", "orpo"])
def test_the_command_line_and_yaml_take_it(command, tmp_path, capsys):
    pick = lambda configs: [c.shared_prompt for c in configs.values() if hasattr(c, "shared_prompt")]
    assert pick(main([command, "--print-config"])) == [False]
    assert pick(main([command, "--shared-prompt", "--print-config"])) == [True]
    (tmp_path / "c.yaml").write_text("shared_prompt: true\n")
    assert pick(main([command, "--config", tmp_path / "c.yaml", "--print-config"])) == [True]
    assert "shared_prompt: true" in capsys.readouterr().out

def test_kto_has_no_shared_prompt(capsys):
    with pytest.raises(SystemExit): main(["kto", "--shared-prompt", "--print-config"])   # unpaired rows: nothing to share
    assert "unrecognized arguments: --shared-prompt" in capsys.readouterr().err

def test_bad_input_is_refused(tok, ds):
    with pytest.raises(ValueError, match="padding_free=True and shared_prompt=True are two layouts"):
        DPOConfig(padding_free=True, shared_prompt=True)
    with pytest.raises(ValueError, match="SimPOConfig: padding_free=True and shared_prompt=True"):
        simpo(tiny_llama(tok), tok, PAIRS, TrainConfig(max_steps=1, progress=False), SimPOConfig(padding_free=True, shared_prompt=True))
    with pytest.raises(ValueError, match="rows need 'rejected_input_ids'"):
        SharedPromptCollator(tok.pad_token_id)([{"chosen_input_ids": [1], "chosen_labels": [1]}])
    with pytest.raises(ValueError, match="pad_token_id is None"): SharedPromptCollator(None)
    pb, sb = batches(tok, list(ds)[:2])
    m = tiny_llama(tok)
    with pytest.raises(ValueError, match="make it with SharedPromptCollator"): shared_prompt_logps(m, pb)
    with pytest.raises(ValueError, match="pass shared_prompt=True"): concatenated_logps(m, sb)
    m.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation='flash_attention_2' takes no 4D attention mask"): shared_prompt_logps(m, sb)
    bad = dict(sb, labels=sb["labels"].clone()); bad["labels"][0, 0] = 5       # a scored prompt token
    with pytest.raises(ValueError, match="outside the chosen and rejected segments"): shared_prompt_logps(tiny_llama(tok), bad)
    assert shared_prompt_mask(torch.tensor([[0, 1, 2, -1]])).shape == (1, 1, 4, 4)
