"""Does rlhf_nb's GRPO (or RLOO) learn as much as TRL 1.16's GRPOTrainer (RLOOTrainer) from the same samples? Reward gained per 1,000 sampled
completions and per nat of KL to the initial policy, on one task, model, data set and set of hyper-parameters.

Task (tests/test_grpo.py::test_grpo_learns_a_checkable_reward): 24 prompts "The movie number {i} was", each with a
`target` column ("good" for odd i, "bad" for even i); the reward is 1 when the completion contains the row's target
word, else 0. A random tiny Llama (hidden 64, 2 layers, 512-token BPE vocabulary, saved with save_pretrained so both
libraries start from the same weights) almost never writes either word; within 50 updates it learns to.

Both sides: 8 prompts per update, k = 8 completions each (64 samples per optimizer step, one rollout per step,
on-policy), at most 6 new tokens, temperature 1.0 without top-k/top-p, group-std-scaled advantages, the per-sequence
mean of per-token terms (rlhf_nb loss_aggregation="sequence" = TRL loss_type="grpo"), clip ε = 0.2, AdamW at a
constant learning rate, gradient clipping at 1.0, fp32 on the CPU. Presets (learning rate, updates, KL coefficient):
  A  3e-3, 50 updates, beta 0     the test's setting: both should reach the ceiling (reward near 1)
  B  3e-3, 25 updates, beta 0     stopped mid-climb, where a difference in learning speed would show
  C  3e-3, 50 updates, beta 0.04  the k3 KL term in the loss on both sides: how far each drifts for its reward

After training, one evaluator (plain transformers, no code of either library) scores each policy on 64 held-out prompts
(i = 1000 … 1063, the same rule for the target), 4 samples each at temperature 1.0: the mean reward and the mean over
samples of Σ_t log π/π_init (the k1 estimate of the sequence KL(π‖π_init), unbiased under π's samples). Reported per
library, mean ± half the range over seeds: held-out reward before → after, the gain per 1,000 training samples, KL,
gain per nat of KL, and the training reward of the first and last 8 updates from the library's own log.

Each run is its own process, forked from a parent that imported the libraries once. Usage (one thread; 5-15 s a run
on 2 shared cores, 3 presets × 5 seeds × 2 libraries ≈ 4-5 minutes):
    pip install -e ".[dev,bench]"
    OMP_NUM_THREADS=1 python bench/grpo_learning.py [--only A,B,C] [--seeds 0,1,2,3,4] [--json out.json]
    OMP_NUM_THREADS=1 python bench/grpo_learning.py --lr 1e-3 --updates 80 --beta 0    # one custom setting
    OMP_NUM_THREADS=1 python bench/grpo_learning.py --algo rloo     # RLOO: leave-one-out advantages, not normalised,
                                                                    # the KL (k1, summed) in the reward on both sides
"""
import argparse, json, os, shutil, statistics, sys, tempfile, time

PROMPTS, K, NEW = 8, 8, 6
PRESETS = {"A": dict(lr=3e-3, updates=50, beta=0.0), "B": dict(lr=3e-3, updates=25, beta=0.0),
           "C": dict(lr=3e-3, updates=50, beta=0.04)}

def rows(numbers) -> list[dict]:
    return [{"prompt": f"The movie number {i} was", "target": "good" if i % 2 else "bad"} for i in numbers]

TRAIN, HELD_OUT = rows(range(24)), rows(range(1000, 1064))

def has_target(prompts, completions, target, **kwargs):
    "Reward: 1 if the completion contains the row's `target` word, else 0."
    return [float(t in c) for c, t in zip(completions, target)]

def save_model(folder: str):
    "The initial policy and its tokenizer, written once: every run (and the evaluator's reference) loads these weights."
    from rlhf_nb.models import tiny_tokenizer, tiny_llama
    tok = tiny_tokenizer()
    tiny_llama(tok, seed=0).save_pretrained(folder); tok.save_pretrained(folder)

# ---------------------------------------------------------------------------------------------- the evaluator
def _sequence_logps(model, ids, mask, start):
    "Σ_t log π(token) over the response columns (from `start`), at temperature 1, under `mask`; (B,)."
    import torch
    logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
    lp = torch.log_softmax(logits[:, start - 1:-1].float(), -1).gather(-1, ids[:, start:, None])[..., 0]   # (B, N)
    return (lp * mask[:, start:]).sum(1)

def evaluate(policy_dir: str, init_dir: str, samples: int = 4, seed: int = 1234) -> dict:
    "Held-out mean reward and mean k1 sequence KL(π‖π_init) from `samples` samples per prompt, plain `generate` with its cache."
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(init_dir, padding_side="left")
    pi, ref = (AutoModelForCausalLM.from_pretrained(d).eval() for d in (policy_dir, init_dir))
    data = [r for r in HELD_OUT for _ in range(samples)]
    enc = tok([r["prompt"] for r in data], return_tensors="pt", padding=True)
    P = enc["input_ids"].shape[1]
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = pi.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=NEW,
                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        resp = out[:, P:]                                                  # (B, N)
        ended = (resp == tok.eos_token_id).int().cumsum(1)
        keep = (ended == 0) | ((ended == 1) & (resp == tok.eos_token_id))  # up to and with the first EOS
        mask = torch.cat([enc["attention_mask"].bool(), keep], 1).long()
        kl = _sequence_logps(pi, out, mask, P) - _sequence_logps(ref, out, mask, P)   # (B,) Σ_t log π/π_init
    texts = tok.batch_decode([r[k & (r != tok.eos_token_id)].tolist() for r, k in zip(resp, keep)],
                             skip_special_tokens=True)
    reward = has_target([r["prompt"] for r in data], texts, [r["target"] for r in data])
    return {"reward": statistics.fmean(reward), "kl": kl.mean().item()}

# ---------------------------------------------------------------------------------------------- the two trainers
ALGO = "grpo"                                                           # set by --algo before any run is forked

def train_rlhf_nb(init_dir, out_dir, seed, updates, lr, beta) -> list[float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from rlhf_nb.grpo import grpo, GRPOConfig
    from rlhf_nb.train import TrainConfig
    tok, policy = AutoTokenizer.from_pretrained(init_dir), AutoModelForCausalLM.from_pretrained(init_dir)
    cfg = TrainConfig(output_dir=tempfile.mkdtemp(), max_steps=updates, batch_size=PROMPTS, lr=lr, schedule="constant",
                      max_grad_norm=1.0, seed=seed, progress=False, save_final=False)
    t = grpo(policy, tok, TRAIN, has_target, config=cfg,
             grpo_config=GRPOConfig(num_generations=K, max_new_tokens=NEW, temperature=1.0, scale_rewards=True,
                                    loss_aggregation="sequence", clip_range=0.2, beta=beta, advantage=ALGO))
    t.acc.unwrap_model(t.model).save_pretrained(out_dir)
    return [h["reward"] for h in t.history]

def train_trl(init_dir, out_dir, seed, updates, lr, beta) -> list[float]:
    import datasets
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer
    C, T, extra = ((GRPOConfig, GRPOTrainer, dict(loss_type="grpo", scale_rewards="group")) if ALGO == "grpo"
                   else (RLOOConfig, RLOOTrainer, dict(normalize_advantages=False)))
    args = C(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=PROMPTS * K, gradient_accumulation_steps=1,
                      steps_per_generation=1, num_generations=K, num_iterations=1, max_completion_length=NEW,
                      temperature=1.0, top_p=1.0, top_k=0, beta=beta, epsilon=0.2, **extra,
                      learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, weight_decay=0.0,
                      max_steps=updates, logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, bf16=False,
                      fp16=False, gradient_checkpointing=False, disable_dropout=True, use_vllm=False, seed=seed,
                      log_completions=False, dataloader_num_workers=0)
    tok = AutoTokenizer.from_pretrained(init_dir, padding_side="left")
    ds = datasets.Dataset.from_dict({k: [r[k] for r in TRAIN] for k in ("prompt", "target")})
    trainer = T(model=init_dir, reward_funcs=has_target, args=args, processing_class=tok, train_dataset=ds)
    trainer.train()
    trainer.model.save_pretrained(out_dir)
    return [h["reward"] for h in trainer.state.log_history if "reward" in h]

LIBS = {"rlhf_nb": train_rlhf_nb, "trl": train_trl}

# ---------------------------------------------------------------------------------------------- the driver
def _child(conn, fn, *args):
    "Run `fn(*args)` in a forked process, its result (or its traceback) sent back through `conn`."
    try:
        null = os.open(os.devnull, os.O_WRONLY); os.dup2(null, 1); os.dup2(null, 2)   # progress bars and log lines
        import torch; torch.manual_seed(0)
        conn.send({"ok": fn(*args)})
    except BaseException as e:
        import traceback; conn.send({"error": f"{getattr(fn, '__name__', fn)}: {e!r}\n{traceback.format_exc()[-3000:]}"})
    finally: conn.close()

def forked(fn, *args):
    import multiprocessing as mp
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(send, fn, *args)); p.start(); send.close()
    res = recv.recv() if recv.poll(None) else {"error": f"{fn.__name__}: the process died (exit {p.exitcode})"}
    p.join()
    if "error" in res: sys.exit(res["error"])
    return res["ok"]

def run(lib, init_dir, seed, p: dict) -> dict:
    "Train one policy with `lib` and setting `p`, then evaluate it against the initial policy (in the same forked process)."
    def go():
        out = tempfile.mkdtemp(prefix=f"{lib}_")
        t0 = time.perf_counter(); train_reward = LIBS[lib](init_dir, out, seed, p["updates"], p["lr"], p["beta"])
        return {"lib": lib, "seed": seed, "train_reward": train_reward, "train_s": time.perf_counter() - t0,
                **evaluate(out, init_dir)}
    return forked(go)

def spread(xs) -> str:
    m, h = statistics.fmean(xs), (max(xs) - min(xs)) / 2
    return f"{m:.3f} ± {h:.3f}"

def report(name: str, p: dict, runs: list[dict], before: dict) -> dict:
    "Print one preset's table; return its numbers per library."
    samples = p["updates"] * PROMPTS * K
    print(f"\n{name} ({ALGO}): lr {p['lr']}, {p['updates']} updates x {PROMPTS} prompts x k={K} = {samples} samples, beta {p['beta']}, "
          f"{len(runs) // len(LIBS)} seeds (mean ± half the range)\n"
          f"| library | held-out reward (before {before['reward']:.3f}) | gain per 1k samples | KL(π‖π_init), nats "
          "| gain per nat | train reward, first 8 → last 8 updates | run s (wall, with setup) |\n|---|---|---|---|---|---|---|")
    out = {}
    for lib in LIBS:
        rs = [r for r in runs if r["lib"] == lib]
        gain = [r["reward"] - before["reward"] for r in rs]
        s = {"reward": [r["reward"] for r in rs], "gain": gain, "gain_per_1k": [g / samples * 1000 for g in gain],
             "kl": [r["kl"] for r in rs], "gain_per_nat": [g / max(r["kl"], 1e-6) for g, r in zip(gain, rs)],
             "first8": [statistics.fmean(r["train_reward"][:8]) for r in rs],
             "last8": [statistics.fmean(r["train_reward"][-8:]) for r in rs], "train_s": [r["train_s"] for r in rs]}
        out[lib] = s
        print(f"| {lib} | {spread(s['reward'])} | {spread(s['gain_per_1k'])} | {spread(s['kl'])} | {spread(s['gain_per_nat'])} "
              f"| {spread(s['first8'])} → {spread(s['last8'])} | {statistics.fmean(s['train_s']):.0f} |")
    return out

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=",".join(PRESETS), help="presets to run, comma-separated")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--lr", type=float); ap.add_argument("--updates", type=int); ap.add_argument("--beta", type=float)
    ap.add_argument("--algo", choices=("grpo", "rloo"), default="grpo")
    ap.add_argument("--json")
    a = ap.parse_args()
    global ALGO; ALGO = a.algo
    seeds = [int(s) for s in a.seeds.split(",")]
    custom = {k: getattr(a, k) for k in ("lr", "updates", "beta") if getattr(a, k) is not None}
    presets = {"custom": {**PRESETS["A"], **custom}} if custom else {k: PRESETS[k] for k in a.only.split(",")}
    os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TRL_EXPERIMENTAL_SILENCE="1")
    import datasets, transformers, trl, rlhf_nb.grpo, rlhf_nb.train                      # noqa: F401  imported once
    from trl import GRPOTrainer, GRPOConfig                                               # noqa: F401
    tempfile.tempdir = tempfile.mkdtemp(prefix="grpo_learning_")         # every run's folders go here, removed at the end
    init_dir = tempfile.mkdtemp(prefix="init_")
    forked(save_model, init_dir)
    before, result = forked(evaluate, init_dir, init_dir), {}
    for name, p in presets.items():
        runs = []
        for seed in seeds:
            for lib in (LIBS if seed % 2 == 0 else list(LIBS)[::-1]):
                runs.append(run(lib, init_dir, seed, p)); r = runs[-1]
                print(f"{name} seed {seed} {lib:8s}: held-out reward {before['reward']:.3f} -> {r['reward']:.3f}, KL "
                      f"{r['kl']:.3f}, train reward first/last 8 {statistics.fmean(r['train_reward'][:8]):.3f} / "
                      f"{statistics.fmean(r['train_reward'][-8:]):.3f}, {r['train_s']:.0f} s", file=sys.stderr, flush=True)
        result[name] = {"setting": p, "summary": report(name, p, runs, before), "runs": runs}
    if a.json: open(a.json, "w").write(json.dumps({"before": before, **result}, indent=1))
    print(json.dumps({"before": before, **{k: {"setting": v["setting"], "summary": v["summary"]} for k, v in result.items()}}))
    shutil.rmtree(tempfile.tempdir, ignore_errors=True)

if __name__ == "__main__": main()
