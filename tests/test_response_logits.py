"""`response_logps` against `token_logps(model(...).logits, labels)`: values and parameter gradients on tiny real models,
its fallbacks, and its gradients under DDP (two processes over gloo)."""
import os, subprocess, sys, textwrap, warnings
import pytest, torch
from torch import nn
import transformers as T
import rlhf_nb.core as core
from rlhf_nb.core import response_logps, token_logps, full_logits_reason
from rlhf_nb.models import tiny_llama, tiny_tokenizer

V = 64

def batch(left=False, B=4, T_=13, seed=0):
    "Ids padded on the left or right; the first 5 real tokens (the prompt) unscored; the last row has no scored token."
    g = torch.Generator().manual_seed(seed)
    pads, pos = torch.tensor([0, 3, 5, 1])[:B, None], torch.arange(T_)
    am = ((pos >= pads) if left else (pos < T_ - pads)).long()
    ids = torch.randint(1, V, (B, T_), generator=g) * am
    labels = ids.masked_fill((am == 0) | (am.cumsum(1) <= 5), -100)
    labels[-1] = -100
    return ids, am, labels

def full(m, ids, am, y): return token_logps(m(input_ids=ids, attention_mask=am).logits, y)
def resp(m, ids, am, y): return response_logps(m, ids, am, y, chunk_tokens=4, use_cache=False)

def grads(fn, m, ids, am, y):
    "Log-probs and the gradient of a position-weighted sum of them (a shift by one changes it) w.r.t. every parameter."
    lp = fn(m, ids, am, y)
    w = torch.arange(1., lp.shape[1] + 1) * torch.tensor([1., -2., 3., 0.5])[:, None]
    gs = torch.autograd.grad((lp * w).sum(), [p for p in m.parameters() if p.requires_grad])
    return lp.detach(), gs

def llama(dtype=torch.float64, tied=False):
    cfg = T.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, tie_word_embeddings=tied)
    torch.manual_seed(0); return T.LlamaForCausalLM(cfg).to(dtype).eval()

def gpt2(dtype=torch.float64):
    torch.manual_seed(0)
    return T.GPT2LMHeadModel(T.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                          bos_token_id=0, eos_token_id=0)).to(dtype).eval()

def lora(target):
    from peft import LoraConfig, get_peft_model
    m = get_peft_model(llama(), LoraConfig(r=4, lora_alpha=8, target_modules=target, lora_dropout=0.0))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n: p.normal_(0, 0.1)                             # adapters that are not a no-op
    return m

MODELS = {"llama": llama, "llama_tied": lambda: llama(tied=True), "gpt2_tied": gpt2,
          "lora_attention": lambda: lora(["q_proj", "v_proj"]), "lora_with_head": lambda: lora(["q_proj", "lm_head"])}

@pytest.mark.parametrize("left", [False, True], ids=["right_pad", "left_pad"])
@pytest.mark.parametrize("name", list(MODELS))
def test_float64_values_and_gradients(name, left):
    m = MODELS[name]()
    assert full_logits_reason(m) is None, full_logits_reason(m)             # the response-only path is taken
    b = batch(left)
    (a, ga), (r, gr) = grads(resp, m, *b), grads(full, m, *b)
    assert torch.equal(a != 0, b[2][:, 1:] != -100)                         # non-zero exactly where a label is scored
    assert torch.equal(a[-1], torch.zeros_like(a[-1]))                      # the row with no scored token
    torch.testing.assert_close(a, r, rtol=0, atol=1e-6)                     # the values are fp32 (as token_logps')
    for x, y in zip(ga, gr): torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)

def test_float32_tolerance_and_chunk_sizes():
    m, b = llama(torch.float32, tied=True), batch(seed=1)
    (r, gr) = grads(full, m, *b)
    for chunk in (1, 7, None):
        a, ga = grads(lambda *x: response_logps(*x, chunk_tokens=chunk), m, *b)
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)
        for x, y in zip(ga, gr): torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)

def test_a_shifted_implementation_would_fail():
    # the test's own yardstick: scoring labels one position late is far outside the tolerances above
    m, (ids, am, y) = llama(), batch()
    late = torch.cat([torch.full_like(y[:, :1], -100), y[:, :-1]], 1)
    assert (resp(m, ids, am, late) - full(m, ids, am, y)).abs().max() > 0.1

def test_no_scored_token_anywhere_keeps_the_graph():
    m, (ids, am, y) = llama(), batch()
    lp = resp(m, ids, am, torch.full_like(y, -100))
    assert torch.equal(lp, torch.zeros_like(lp)) and lp.requires_grad
    lp.sum().backward()                                                     # no error: still connected to the model
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in m.parameters())

class ScaledHead(nn.Module):
    "A causal LM whose forward divides the logits by 4 after the head, with nothing in its config that says so."
    def __init__(self):
        super().__init__(); self.inner = llama()
    def get_output_embeddings(self): return self.inner.get_output_embeddings()
    def forward(self, input_ids, attention_mask=None, logits_to_keep=0, **kw):
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep, **kw)
        out.logits = out.logits / 4
        return out

def test_fallbacks_give_todays_numbers():
    b = batch()
    gemma = T.Gemma2ForCausalLM(T.Gemma2Config(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                               num_attention_heads=2, num_key_value_heads=2, head_dim=8)).double()
    cohere = T.CohereForCausalLM(T.CohereConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                num_attention_heads=2, num_key_value_heads=2, logit_scale=0.0625)).double()
    for m, why in ((gemma, "final_logit_softcapping"), (cohere, "logit_scale")):
        assert why in full_logits_reason(m)
        with torch.no_grad(): assert torch.equal(resp(m, *b), full(m, *b))
    m = ScaledHead()
    assert full_logits_reason(m) is None                                    # nothing static gives it away ...
    with pytest.warns(UserWarning, match="not its output embedding"):      # ... the check on every call does
        with torch.no_grad(): got = resp(m, *b)
    with torch.no_grad(): assert torch.equal(got, full(m, *b))

def test_switch_off():
    m, b = llama(), batch()
    core.USE_RESPONSE_LOGITS = False
    try:
        assert "switched off" in full_logits_reason(m)
        with torch.no_grad(): assert torch.equal(resp(m, *b), full(m, *b))
    finally: core.USE_RESPONSE_LOGITS = True

DDP_SCRIPT = textwrap.dedent("""
    import sys, torch
    from accelerate import Accelerator
    from rlhf_nb.core import response_logps, token_logps, full_logits_reason
    from rlhf_nb.models import tiny_llama, tiny_tokenizer
    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    tok = tiny_tokenizer(); m = tiny_llama(tok, seed=3)                     # tied embeddings
    ids = torch.randint(3, len(tok), (4, 12)); am = torch.ones_like(ids); y = ids.clone(); y[:, :5] = -100; y[1, 8:] = -100
    w = torch.tensor([1., -2., 3., .5])[:, None]
    ref = tiny_llama(tok, seed=3)                                           # one process, the whole batch, full logits
    (token_logps(ref(input_ids=ids, attention_mask=am).logits, y) * w).sum().backward()
    dm = acc.prepare(m)
    assert isinstance(dm, torch.nn.parallel.DistributedDataParallel) and full_logits_reason(dm) is None
    r = acc.process_index; mine = slice(2 * r, 2 * r + 2)                  # each process: its half of the rows
    (response_logps(dm, ids[mine], am[mine], y[mine], chunk_tokens=5) * w[mine]).sum().backward()
    for (n, p), q in zip(m.named_parameters(), ref.parameters()):           # DDP averages: 2 x the mean = the sum
        torch.testing.assert_close(2 * p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=n)
    open(f"{sys.argv[1]}/ok{r}", "w").close()                               # one file per process: stdout interleaves
""")

def free_port():
    import socket
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def test_ddp_two_processes_sync_gradients(tmp_path):
    script = tmp_path / "ddp_resp.py"; script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
                        str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    assert (tmp_path / "ok0").exists() and (tmp_path / "ok1").exists()

def test_accelerate_bf16_autocast_reaches_the_head():
    # accelerate runs the model's forward under autocast; the head calls outside it must run under the same autocast
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(True)
    try:
        m, b = Accelerator(cpu=True, mixed_precision="bf16").prepare(llama(torch.float32)), batch()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)                    # no fallback: the response-only path ran
            a, r = resp(m, *b), full(m, *b)
            fp32 = token_logps(m._original_forward(input_ids=b[0], attention_mask=b[1]).logits, b[2])
        torch.testing.assert_close(a, r, rtol=0, atol=1e-5)                 # the same bf16 logits
        assert (a - fp32).abs().max() > 1e-4                                # which are not the fp32 ones
    finally: AcceleratorState._reset_state(True)
