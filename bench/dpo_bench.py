"""DPO step time and peak memory: rlhf_nb vs the bare PyTorch floor vs TRL's DPOTrainer, on one tiny Llama.

Setting (from the issue): Llama hidden 256, 4 layers, 4 heads, vocab 1000, fp32, no gradient checkpointing; batches of
8 pairs, 32-token prompts and 32-token responses (+ EOS); the same steps for every variant. Each variant runs in its own
process so peak memory is its own. Usage:
    pip install -e ".[dev,bench]"
    python bench/dpo_bench.py [--steps 20] [--warmup 5] [--out bench/results/dpo.json]
Prints a markdown table of median step time and peak resident memory above the pre-training level.
"""
import argparse, json, os, resource, statistics, subprocess, sys, time
from pathlib import Path

B, P, R, VOCAB = 8, 32, 32, 1000

def tokenizer():
    "A word-level tokenizer where every word is one token, so prompts and responses have exactly P and R tokens."
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    words = ["<|pad|>", "<|endoftext|>"] + [f"w{i}" for i in range(VOCAB - 2)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|endoftext|>")

def rows(n, seed=0):
    import random
    rng = random.Random(seed)
    text = lambda k: " ".join(f"w{rng.randrange(VOCAB - 2)}" for _ in range(k))
    return [{"prompt": text(P), "chosen": " " + text(R), "rejected": " " + text(R)} for _ in range(n)]

def model(tok):
    from rlhf_nb.models import tiny_llama
    return tiny_llama(tok, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=688, seed=0)

def rss_mib():
    import psutil
    return psutil.Process().memory_info().rss / 2**20

def peak_mib(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

# ---------------------------------------------------------------------------------------------- the variants
def run_rlhf_nb(steps, precompute):
    from rlhf_nb.train import TrainConfig
    from rlhf_nb.dpo_trainer import dpo, DPOConfig
    from rlhf_nb.models import frozen_copy
    import tempfile
    tok = tokenizer(); policy = model(tok); ref = None if precompute else frozen_copy(policy)
    cfg = TrainConfig(output_dir=tempfile.mkdtemp(), max_steps=steps, batch_size=B, lr=1e-5, shuffle=False,
                      progress=False, save_final=False, max_grad_norm=None)
    base = rss_mib()
    t = dpo(policy, tok, rows(B * steps), cfg, DPOConfig(beta=0.1, max_length=P + R + 1, max_prompt_length=P,
                                                         precompute_ref=precompute), ref_model=ref)
    return [h["step_time_s"] for h in t.history], base

def run_bare(steps, precompute):
    "The floor: policy fwd+bwd on the stacked 2B batch, reference fwd, the DPO loss, AdamW — plain torch, pre-collated."
    import copy, torch, torch.nn.functional as F
    tok = tokenizer(); policy = model(tok); ref = copy.deepcopy(policy).eval().requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    data = rows(B * steps)
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    batches = []
    for i in range(steps):
        chunk = data[i * B:(i + 1) * B]
        seqs = [enc(r["prompt"]) + enc(r[k]) + [tok.eos_token_id] for k in ("chosen", "rejected") for r in chunk]
        ids = torch.tensor(seqs)                                          # (2B, T): all the same length here
        labels = ids.clone(); labels[:, :P] = -100
        batches.append((ids, labels))
    def logps(m, ids, labels):
        logits = m(input_ids=ids).logits[:, :-1]
        lab = labels[:, 1:]
        lp = logits.log_softmax(-1).gather(-1, lab.clamp(min=0)[..., None]).squeeze(-1)
        return (lp * (lab != -100)).sum(-1)
    base, times = rss_mib(), []
    for ids, labels in batches:
        t0 = time.perf_counter()
        pc, pr = logps(policy, ids, labels).chunk(2)
        with torch.no_grad(): rc, rr = logps(ref, ids, labels).chunk(2)
        loss = -F.logsigmoid(0.1 * ((pc - rc) - (pr - rr))).mean()
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        loss.item()
        times.append(time.perf_counter() - t0)
    return times, base

def run_trl(steps, precompute):
    import tempfile, datasets
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer
    from rlhf_nb.models import frozen_copy
    tok = tokenizer(); policy = model(tok); ref = frozen_copy(policy)
    times = []
    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k): self.t0 = time.perf_counter()
        def on_step_end(self, *a, **k): times.append(time.perf_counter() - self.t0)
    args = DPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=B, max_steps=steps, learning_rate=1e-5,
                     logging_steps=10**6, report_to="none", bf16=False, save_strategy="no", max_length=None,
                     precompute_ref_log_probs=precompute, dataloader_num_workers=0, max_grad_norm=0.0,
                     use_cpu=True, disable_tqdm=True, seed=0, gradient_checkpointing=False)   # TRL defaults to True
    base = rss_mib()                        # like the others: before the trainer tokenizes and prepares anything
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=datasets.Dataset.from_list(rows(B * steps)),
                         processing_class=tok, callbacks=[Timer()])
    trainer.train()
    return times, base

VARIANTS = {"rlhf_nb": (run_rlhf_nb, False), "rlhf_nb_precomputed": (run_rlhf_nb, True), "bare": (run_bare, False),
            "trl": (run_trl, False), "trl_precomputed": (run_trl, True)}

def child(name, steps, warmup):
    import torch
    torch.manual_seed(0)
    fn, pre = VARIANTS[name]
    times, base = fn(steps + warmup, pre)
    steady = times[warmup:]
    print(json.dumps({"variant": name, "median_step_s": statistics.median(steady), "mean_step_s": statistics.mean(steady),
                      "steps": len(steady), "peak_mib_above_start": peak_mib() - base}))

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20); ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--variants", default=",".join(VARIANTS)); ap.add_argument("--out")
    ap.add_argument("--child")
    a = ap.parse_args()
    if a.child: return child(a.child, a.steps, a.warmup)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_DISABLE_RICH": "1"}
    res = {}
    for v in a.variants.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", v, "--steps", str(a.steps), "--warmup", str(a.warmup)],
                             capture_output=True, text=True, env=env)
        if out.returncode: sys.exit(f"{v} failed:\n{out.stderr[-3000:]}")
        res[v] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"| variant | median step (ms) | vs bare | vs TRL | peak MiB above start |\n|---|---|---|---|---|")
    for v, r in res.items():
        rel = lambda k: f"{r['median_step_s'] / res[k]['median_step_s']:.2f}" if k in res else "–"
        vs_trl = rel("trl_precomputed" if v.endswith("precomputed") else "trl")
        print(f"| {v} | {1000 * r['median_step_s']:.1f} | {rel('bare')} | {vs_trl} | {r['peak_mib_above_start']:.0f} |")
    if a.out: Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text(json.dumps(res, indent=1))

if __name__ == "__main__": main()
