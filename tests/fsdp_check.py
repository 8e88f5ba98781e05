"""Run by tests/test_fsdp.py under `torch.distributed.run --nproc_per_node 2` (gloo, CPU).

torch's FSDP2 (`fully_shard`) shards a tiny Llama across the two processes, one unit per decoder layer plus the root.
Every process also keeps an unsharded copy with the same weights. On the same batch the library's parts must give
the same numbers on both (the sharded one through the full-logits fallback of `response_logps`): DPO's per-sequence log-probs from one forward pass over the stacked pairs, the DPO loss's
gradients (gathered from the shards), and greedy sampling through the PPO/GRPO sampler. Prints `FSDP OK <rank>`.
"""
import copy, sys
import torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from rlhf_nb.models import tiny_tokenizer, tiny_llama
from rlhf_nb.core import full_logits_reason
from rlhf_nb.data import tokenize_preferences, PreferenceCollator, tokenize_prompts, PromptCollator
from rlhf_nb.dpo import dpo_loss
from rlhf_nb.dpo_trainer import concatenated_logps
from rlhf_nb.ppo_trainer import sample_responses, PPOConfig

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
tok = tiny_tokenizer()
plain = tiny_llama(tok, seed=0).double().eval()
sharded = copy.deepcopy(plain)
for layer in sharded.model.layers: fully_shard(layer)
fully_shard(sharded)
p = next(sharded.parameters())
assert isinstance(p, DTensor) and p.to_local().shape[0] < p.shape[0], "the parameters are not sharded"
# response-only logits call the output layer outside the forward, where FSDP has resharded it: they must fall back
assert full_logits_reason(sharded) == "FSDP-sharded model" and full_logits_reason(plain) is None, full_logits_reason(sharded)

rows = [{"prompt": f"Film {i} was", "chosen": " good and fun" + " really" * i, "rejected": " dull."} for i in range(4)]
ds, _ = tokenize_preferences(rows, tok, max_length=32)
batch = PreferenceCollator(tok.pad_token_id)(list(ds))
batch = {k: v for k, v in batch.items() if torch.is_tensor(v)}

def dpo_grads(model):
    model.zero_grad()
    c, r = concatenated_logps(model, batch)
    loss = dpo_loss(c, r, c.detach() - 0.1, r.detach() + 0.1, beta=0.5)[0].mean()
    loss.backward()
    grads = {n: (q.grad.full_tensor() if isinstance(q.grad, DTensor) else q.grad) for n, q in model.named_parameters()}
    return c.detach(), r.detach(), loss.detach(), grads

c0, r0, l0, g0 = dpo_grads(plain)
c1, r1, l1, g1 = dpo_grads(sharded)
torch.testing.assert_close(c1, c0, rtol=0, atol=1e-10); torch.testing.assert_close(r1, r0, rtol=0, atol=1e-10)
torch.testing.assert_close(l1, l0, rtol=0, atol=1e-12)
assert g0.keys() == g1.keys() and all(g0[n] is not None for n in g0)
for n in g0: torch.testing.assert_close(g1[n], g0[n], rtol=1e-8, atol=1e-10, msg=lambda m: f"{n}: {m}")

pds, _ = tokenize_prompts([{"prompt": f"Film {i} was"} for i in range(3)], tok)
prompts = PromptCollator(tok.pad_token_id)(list(pds))
cfg = PPOConfig(max_new_tokens=6, top_k=1)                      # top-k 1: greedy, so both samples must agree
s0 = sample_responses(plain, prompts["input_ids"], prompts["attention_mask"], tok, cfg)
s1 = sample_responses(sharded, prompts["input_ids"], prompts["attention_mask"], tok, cfg)
assert torch.equal(s0["input_ids"], s1["input_ids"]) and torch.equal(s0["mask"], s1["mask"])
print(f"FSDP OK {rank}", flush=True)
dist.destroy_process_group()
