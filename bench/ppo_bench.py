"""PPO: seconds per update of rlhf_nb vs TRL 1.12.0's trl.experimental.ppo.PPOTrainer, and generation tokens/s of
rlhf_nb's sampler vs a bare `model.generate` with the KV cache — the same tiny models and settings for all.

Setting (from the issue): a Llama policy (hidden 256, 4 layers, 4 heads), tiny Llama reward and value models (hidden
128, 2 layers), 8 prompts × 32 new tokens per update, 4 PPO epochs, 1 minibatch, fp32 on the CPU (or CUDA if present).
Each variant runs in its own process. Usage:
    pip install -e ".[dev,bench]" trl==1.12.0     # TRL's PPOTrainer (trl.experimental.ppo) is gone from later releases
    python bench/ppo_bench.py [--updates 6] [--warmup 2] [--repeats 3]
"""
import argparse, copy, json, os, statistics, subprocess, sys, time

PROMPTS, NEW, EPOCHS = 8, 32, 4

def setup():
    import torch
    from transformers import LlamaForSequenceClassification
    from rlhf_nb.models import tiny_tokenizer, tiny_llama
    tok = tiny_tokenizer(vocab_size=1000)
    policy = tiny_llama(tok, hidden_size=256, num_layers=4, num_heads=4, seed=0)
    rm = tiny_llama(tok, hidden_size=128, num_layers=2, num_heads=4, seed=1, cls=LlamaForSequenceClassification)
    value = copy.deepcopy(rm); torch.nn.init.zeros_(value.score.weight)
    prompts = [f"The movie number {i} was" for i in range(256)]
    return tok, policy, rm, value, prompts

def run_rlhf_nb(updates, sampler=False):
    import tempfile
    from rlhf_nb.ppo_trainer import ppo, PPOConfig
    from rlhf_nb.train import TrainConfig
    tok, policy, rm, value, prompts = setup()
    cfg = TrainConfig(output_dir=tempfile.mkdtemp(), max_steps=updates, batch_size=PROMPTS, lr=1e-5, progress=False,
                      save_final=False, max_grad_norm=None)
    t = ppo(policy, tok, [{"prompt": p} for p in prompts], reward_model=rm, config=cfg, value_model=value,
            ppo_config=PPOConfig(max_new_tokens=NEW, temperature=0.7, ppo_epochs=EPOCHS, num_minibatches=1,
                                 logps_from_sampler=sampler))
    steps = [h["step_time_s"] for h in t.history]                 # log_every=1: one row per minibatch step
    return [sum(steps[i:i + EPOCHS]) for i in range(0, len(steps), EPOCHS)]

def run_trl(updates):
    import tempfile, datasets
    from transformers import TrainerCallback
    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
    from trl.experimental.ppo import PPOTrainer, PPOConfig
    tok, policy, rm, value, prompts = setup()
    ref = copy.deepcopy(policy).eval()
    ds = datasets.Dataset.from_dict({"input_ids": [tok(p)["input_ids"] for p in prompts]})
    marks = []
    class Timer(TrainerCallback):
        def on_step_end(self, *a, **k): marks.append(time.perf_counter())
    args = PPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=PROMPTS, num_mini_batches=1,
                     gradient_accumulation_steps=1, num_ppo_epochs=EPOCHS, response_length=NEW, temperature=0.7,
                     total_episodes=PROMPTS * updates, learning_rate=1e-5, report_to="none", num_sample_generations=0,
                     save_strategy="no", use_cpu=True, bf16=False, logging_steps=10**6, seed=0, kl_coef=0.05,
                     local_rollout_forward_batch_size=PROMPTS, stop_token=None, max_grad_norm=0.0,
                     gradient_checkpointing=False)   # TRL defaults to True; neither side checkpoints here
    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=rm,
                         train_dataset=ds, value_model=value, callbacks=[Timer()])
    t0 = time.perf_counter(); trainer.train()
    marks = [t0] + marks
    return [b - a for a, b in zip(marks, marks[1:])]

def run_generation(updates, ours: bool):
    import torch
    from rlhf_nb.ppo_trainer import sample_responses, PPOConfig
    tok, policy, *_ , prompts = setup()
    policy.eval()
    tok.padding_side = "left"
    batch = tok(prompts[:PROMPTS], return_tensors="pt", padding=True)
    times, tokens = [], []
    for _ in range(updates):
        t0 = time.perf_counter()
        with torch.no_grad():
            if ours:
                seq = sample_responses(policy, batch["input_ids"], batch["attention_mask"], tok, PPOConfig(max_new_tokens=NEW, temperature=0.7))
                n = int((seq["labels"] != -100).sum())
            else:
                out = policy.generate(**batch, do_sample=True, temperature=0.7, top_k=0, top_p=1.0, max_new_tokens=NEW,
                                      pad_token_id=tok.pad_token_id, use_cache=True)
                n = int(((out[:, batch["input_ids"].shape[1]:]) != tok.pad_token_id).sum())
        times.append(time.perf_counter() - t0); tokens.append(n)
    return [n / t for n, t in zip(tokens, times)]

VARIANTS = {"rlhf_nb": run_rlhf_nb, "rlhf_nb_sampler": lambda u: run_rlhf_nb(u, sampler=True), "trl": run_trl, "generate_rlhf_nb": lambda u: run_generation(u, True),
            "generate_bare": lambda u: run_generation(u, False)}

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--updates", type=int, default=6); ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each variant, interleaved (round 1: every variant, round 2: ...)")
    ap.add_argument("--variants", default=",".join(VARIANTS)); ap.add_argument("--child")
    a = ap.parse_args()
    if a.child:
        import torch; torch.manual_seed(0)
        vals = VARIANTS[a.child](a.updates + a.warmup)[a.warmup:]
        print(json.dumps({"variant": a.child, "median": statistics.median(vals), "n": len(vals)})); return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TRL_EXPERIMENTAL_SILENCE": "1"}
    rounds = []
    for _ in range(a.repeats):
        res = {}
        for v in a.variants.split(","):
            out = subprocess.run([sys.executable, __file__, "--child", v, "--updates", str(a.updates), "--warmup", str(a.warmup)],
                                 capture_output=True, text=True, env=env)
            if out.returncode: sys.exit(f"{v} failed:\n{out.stderr[-3000:]}")
            res[v] = json.loads(out.stdout.strip().splitlines()[-1])["median"]
        rounds.append(res)
    med = lambda v: statistics.median(r[v] for r in rounds)
    ratios = lambda v, ref: ", ".join(f"{r[v] / r[ref]:.2f}" for r in rounds)     # one ratio per round: the runs side by side
    have = set(rounds[0])
    print("| measure | rlhf_nb | reference | ratio (median) | per round | target |\n|---|---|---|---|---|---|")
    for v, label in (("rlhf_nb", "seconds per PPO update"), ("rlhf_nb_sampler", "seconds per PPO update, logps_from_sampler")):
        if {v, "trl"} <= have:
            print(f"| {label} | {med(v):.3f} | TRL {med('trl'):.3f} | "
                  f"{statistics.median(r[v] / r['trl'] for r in rounds):.2f} | {ratios(v, 'trl')} | ≤ 0.5 |")
    if {"generate_rlhf_nb", "generate_bare"} <= have:
        print(f"| generation tokens/s | {med('generate_rlhf_nb'):.0f} | bare generate {med('generate_bare'):.0f} | "
              f"{statistics.median(r['generate_rlhf_nb'] / r['generate_bare'] for r in rounds):.2f} | "
              f"{ratios('generate_rlhf_nb', 'generate_bare')} | ≥ 0.9 |")

if __name__ == "__main__": main()
