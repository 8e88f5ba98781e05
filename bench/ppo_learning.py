"""Does PPO learn? rlhf_nb's PPO against a plain REINFORCE with a batch-mean baseline, on a task a tiny random Llama
can learn: the reward is the share of a–z letters in a 32-token completion of a few-word prompt (13b_ppo_trainer, "Does PPO
learn? A baseline").

Both methods see the same number of sampled responses, use the same learning rate, AdamW, gradient clipping at 1.0,
cosine schedule and the same k1 KL penalty β·Σ_t log π/π_ref in the reward. PPO's settings come from the `rlhf_nb ppo`
command-line parser (its defaults unless flags are given; a real `rlhf_nb ppo` run gives the same per-update scores),
so a run measures what a user of the command gets. After training, each policy is evaluated on held-out prompts
(64 prompts × 4 samples): its mean score and its KL(π‖π_ref), the mean over sampled responses of Σ_t log π/π_ref at
the sampling temperature (the k1 estimate: unbiased). Reported per setting, mean ± half the range over seeds: score
gain (after − before), KL, gain per nat of KL, gain per 1,000 training samples, and for PPO the critic's explained
variance over the last 10 rollouts. Presets: A = 40 updates at lr 1e-4, B = 40 updates of 32 prompts at lr 1e-3,
C = 150 updates of 32 prompts at lr 1e-3; each spells out the GAE λ and batch size it uses.

Usage (one CPU thread; a run takes seconds to two minutes, all presets on 3 seeds about 25 minutes):
    OMP_NUM_THREADS=1 python bench/ppo_learning.py --json runs.json         # every preset, 3 seeds
    OMP_NUM_THREADS=1 python bench/ppo_learning.py --only B --seeds 0       # one group, one seed
    OMP_NUM_THREADS=1 python bench/ppo_learning.py --only B --optimum       # the best possible score and KL at β
    OMP_NUM_THREADS=1 python bench/ppo_learning.py --ppo "--max-steps 40 --lr 1e-3" --ppo-set vf_coef=1.0
"""
import argparse, ast, json, shlex, statistics, tempfile, time
from dataclasses import replace
import torch

WORDS = "the movie plot music film story actors ending was good bad slow great and I liked it".split()

def letter_share(prompts, completions):
    "Reward: the fraction of the completion's characters that are a–z."
    return [sum("a" <= ch <= "z" for ch in c) / max(len(c), 1) for c in completions]

def prompt_rows(n, seed):
    "n prompts of two to six words."
    import random
    rng = random.Random(seed)
    return [{"prompt": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))} for _ in range(n)]

_TOK = None
def tokenizer():
    "The tiny BPE tokenizer, trained once."
    global _TOK
    if _TOK is None:
        from rlhf_nb.models import tiny_tokenizer
        _TOK = tiny_tokenizer()
    return _TOK

def cli_configs(args: list[str], out: str):
    "TrainConfig and PPOConfig exactly as `rlhf_nb ppo ARGS` resolves them (defaults < command defaults < flags)."
    from rlhf_nb.cli import command_configs
    c = command_configs(["ppo", "--model", "-", "--dataset", "-", "--reward-fn", "m:f", "--output-dir", out, "--quiet", *args])
    return c["TrainConfig"], c["PPOConfig"]

@torch.no_grad()
def evaluate(policy, ref, cfg, n_prompts=64, k=4, seed=1234) -> dict:
    "Mean score and mean k1 sequence KL(π‖π_ref) of `policy` on held-out prompts, k samples each, at cfg's temperature."
    from rlhf_nb.core import token_logps
    from rlhf_nb.data import tokenize_prompts, PromptCollator
    from rlhf_nb.ppo_trainer import sample_responses, score_responses
    tok, dev = tokenizer(), next(policy.parameters()).device
    ds, _ = tokenize_prompts(prompt_rows(n_prompts, seed) * k, tok, cfg.max_prompt_length)
    policy.eval(); ref.eval()
    scores, kls = [], []
    g = torch.random.fork_rng(devices=[])
    with g:
        torch.manual_seed(seed)
        for i in range(0, len(ds), 64):
            b = PromptCollator(tok.pad_token_id)([ds[j] for j in range(i, min(i + 64, len(ds)))])
            b = {kk: v.to(dev) if torch.is_tensor(v) else v for kk, v in b.items()}
            seq = sample_responses(policy, b["input_ids"], b["attention_mask"], tok, cfg)
            kw = {kk: seq[kk] for kk in ("input_ids", "attention_mask", "position_ids")}
            lp = token_logps(policy(**kw).logits / cfg.temperature, seq["labels"])
            lr = token_logps(ref(**kw).logits / cfg.temperature, seq["labels"])
            kls += torch.where(seq["mask"], lp - lr, 0).sum(1).tolist()
            scores += score_responses(seq, b, tok, cfg, reward_fn=letter_share).tolist()
    return {"score": statistics.fmean(scores), "kl": statistics.fmean(kls)}

@torch.no_grad()
def optimum(seed: int, cli_args: list[str], beta: float | None = None, n_prompts=64, k=4, eval_seed=1234) -> dict:
    "≈ score and KL of the maximiser of E[S] − β·KL for `letter_share` (13b_ppo_trainer, *The best any policy can do*)."
    from rlhf_nb.core import token_logps
    from rlhf_nb.data import tokenize_prompts, PromptCollator
    from rlhf_nb.models import tiny_llama
    from rlhf_nb.ppo_trainer import sample_responses
    tok = tokenizer()
    _, cfg = cli_configs(cli_args, tempfile.mkdtemp())
    beta = cfg.kl_coef if beta is None else beta
    ref = tiny_llama(tok, seed=seed).eval()
    ds, _ = tokenize_prompts(prompt_rows(n_prompts, eval_seed) * k, tok, cfg.max_prompt_length)
    b = PromptCollator(tok.pad_token_id)(list(ds))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(eval_seed)
        seq = sample_responses(ref, b["input_ids"], b["attention_mask"], tok, cfg)
    logits = ref(**{kk: seq[kk] for kk in ("input_ids", "attention_mask", "position_ids")}).logits[:, :-1] / cfg.temperature
    ref_logp = logits[seq["mask"]][::4].double().log_softmax(-1)           # (N, V) π_ref at every 4th sampled state
    n = seq["mask"].sum(1).double().mean()
    strs = [tok.decode([i]) for i in range(len(tok))]
    L = torch.tensor([sum("a" <= ch <= "z" for ch in x) for x in strs], dtype=torch.float64)
    C = torch.tensor([len(x) for x in strs], dtype=torch.float64)
    share = lambda lp: ((lp.exp() * L).sum(-1).mean() / (lp.exp() * C).sum(-1).mean()).item()
    q = ref_logp
    for _ in range(40):                                                   # π* ∝ π_ref·exp(r/β), r = (L − S·C)/(n·c̄)
        cbar = (q.exp() * C).sum(-1).mean()
        q = (ref_logp + (L - share(q) * C) / (n * cbar * beta)).log_softmax(-1)
    return {"start": share(ref_logp), "score": share(q), "kl": (n * (q.exp() * (q - ref_logp)).sum(-1).mean()).item()}

def run_ppo(seed: int, cli_args: list[str], ppo_set: dict, n_prompts=128) -> dict:
    "rlhf_nb's `ppo` with the CLI's configuration for `cli_args` (+ PPOConfig fields in `ppo_set`)."
    from rlhf_nb.models import tiny_llama, frozen_copy
    from rlhf_nb.ppo_trainer import ppo
    tok = tokenizer()
    train_cfg, cfg = cli_configs(cli_args, tempfile.mkdtemp())
    train_cfg = replace(train_cfg, seed=seed, save_final=False)
    cfg = replace(cfg, **ppo_set)
    policy = tiny_llama(tok, seed=seed); ref = frozen_copy(policy)
    before = evaluate(policy, ref, cfg)
    t0 = time.perf_counter()
    tr = ppo(policy, tok, prompt_rows(n_prompts, seed), reward_fn=letter_share, config=train_cfg, ppo_config=cfg)
    secs = time.perf_counter() - t0
    seen, curve = set(), []
    for h in tr.history:                                                  # one row per update: its first minibatch
        if h["episode"] in seen: continue
        seen.add(h["episode"])
        rows = [r for r in tr.history if r["episode"] == h["episode"]]   # every minibatch of this update
        curve.append({"samples": h["episode"], "score": h["objective/scores"], "kl": h["objective/kl"],
                      "ev": h["val/explained_variance"],
                      "clipfrac": statistics.fmean(r["policy/clipfrac_avg"] for r in rows),
                      "approxkl": statistics.fmean(r["policy/approxkl_avg"] for r in rows)})
    after = evaluate(tr.acc.unwrap_model(tr.model).policy.to(next(ref.parameters()).device), ref, cfg)
    return {"before": before, "after": after, "samples": curve[-1]["samples"], "seconds": secs, "curve": curve,
            "ev_last10": statistics.fmean(c["ev"] for c in curve[-10:]),
            "clipfrac": statistics.fmean(c["clipfrac"] for c in curve),
            "config": {"train": {k: getattr(train_cfg, k) for k in ("lr", "batch_size", "max_steps", "schedule")},
                       "ppo": cfg.__dict__}}

def run_reinforce(seed: int, cli_args: list[str], ppo_set: dict, n_prompts=128, baseline="batch") -> dict:
    "Plain REINFORCE: A = R − mean R of the batch, loss = −mean(A·Σ_t log π), one AdamW step per batch of samples."
    from torch.utils.data import DataLoader
    from rlhf_nb.core import token_logps
    from rlhf_nb.data import tokenize_prompts, PromptCollator
    from rlhf_nb.models import tiny_llama, frozen_copy
    from rlhf_nb.ppo_trainer import sample_responses, score_responses
    from transformers import get_scheduler
    from rlhf_nb.train import _SCHEDULES
    tok = tokenizer()
    train_cfg, cfg = cli_configs(cli_args, tempfile.mkdtemp())
    cfg = replace(cfg, **ppo_set)
    torch.manual_seed(seed)
    policy = tiny_llama(tok, seed=seed); ref = frozen_copy(policy)
    before = evaluate(policy, ref, cfg)
    ds, _ = tokenize_prompts(prompt_rows(n_prompts, seed), tok, cfg.max_prompt_length)
    dl = DataLoader(ds, batch_size=train_cfg.batch_size, shuffle=True, collate_fn=PromptCollator(tok.pad_token_id),
                    drop_last=True, generator=torch.Generator().manual_seed(seed))
    updates = train_cfg.max_steps
    opt = torch.optim.AdamW(policy.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    sched = get_scheduler(_SCHEDULES[train_cfg.schedule], opt, num_warmup_steps=train_cfg.warmup_steps, num_training_steps=updates)
    curve, n, t0, running = [], 0, time.perf_counter(), None
    while len(curve) < updates:
        for b in dl:
            if len(curve) == updates: break
            policy.eval()
            seq = sample_responses(policy, b["input_ids"], b["attention_mask"], tok, cfg)
            scores = score_responses(seq, b, tok, cfg, reward_fn=letter_share)              # (B,)
            kw = {k: seq[k] for k in ("input_ids", "attention_mask", "position_ids")}
            policy.train()
            logps = token_logps(policy(**kw).logits / cfg.temperature, seq["labels"])       # (B, T-1) with grad
            with torch.no_grad(): ref_logps = token_logps(ref(**kw).logits / cfg.temperature, seq["labels"])
            kl = torch.where(seq["mask"], logps.detach() - ref_logps, 0).sum(1)             # (B,) k1 sequence KL
            R = scores - cfg.kl_coef * kl                                                    # (B,) KL-penalised return
            b_ = R.mean() if baseline == "batch" or running is None else running
            A = R - b_                                                                       # (B,) advantage
            if baseline == "running": running = R.mean() if running is None else 0.9 * running + 0.1 * R.mean()
            loss = -(A * torch.where(seq["mask"], logps, 0).sum(1)).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), train_cfg.max_grad_norm or float("inf"))
            opt.step(); sched.step(); opt.zero_grad(set_to_none=True)
            n += len(scores)
            curve.append({"samples": n, "score": scores.mean().item(), "kl": kl.mean().item()})
    secs = time.perf_counter() - t0
    return {"before": before, "after": evaluate(policy, ref, cfg), "samples": n, "seconds": secs, "curve": curve}

def summarise(runs: list[dict]) -> dict:
    "Mean and spread (min–max half-range) over seeds of gain, KL, gain per nat, gain per 1k samples."
    rows = [{"gain": r["after"]["score"] - r["before"]["score"], "kl": r["after"]["kl"],
             "per_nat": (r["after"]["score"] - r["before"]["score"]) / max(r["after"]["kl"], 1e-3),
             "per_1k": (r["after"]["score"] - r["before"]["score"]) / (r["samples"] / 1000),
             "start": r["before"]["score"], "end": r["after"]["score"], "s": r["seconds"],
             **({"ev": r["ev_last10"]} if "ev_last10" in r else {})} for r in runs]
    return {k: (statistics.fmean(x[k] for x in rows), (max(x[k] for x in rows) - min(x[k] for x in rows)) / 2)
            for k in rows[0]}

# name -> (method, CLI flags, PPOConfig overrides); every setting that changed is spelled out, so a preset measures the
# same thing whatever the current defaults are
OLD = {"lam": 0.95}                                                       # PPOConfig's GAE λ before the change
PRESETS = {
    # the report's first run: 40 updates of 8 prompts at lr 1e-4 (the old default batch size)
    "A ppo λ=0.95 bs 8 lr 1e-4": ("ppo", "--max-steps 40 --lr 1e-4 --batch-size 8", OLD),
    "A reinforce bs 8 lr 1e-4":  ("reinforce", "--max-steps 40 --lr 1e-4 --batch-size 8", {}),
    "A ppo λ=1 bs 32 lr 1e-4":   ("ppo", "--max-steps 40 --lr 1e-4 --batch-size 32", {"lam": 1.0}),
    # the report's second run: 40 updates of 32 prompts at lr 1e-3
    "B ppo λ=0.95 bs 32 lr 1e-3": ("ppo", "--max-steps 40 --lr 1e-3 --batch-size 32", OLD),
    "B ppo λ=1 bs 32 lr 1e-3":    ("ppo", "--max-steps 40 --lr 1e-3 --batch-size 32", {"lam": 1.0}),
    "B reinforce bs 32 lr 1e-3":  ("reinforce", "--max-steps 40 --lr 1e-3 --batch-size 32", {}),
    "B reinforce bs 32 lr 3e-3":  ("reinforce", "--max-steps 40 --lr 3e-3 --batch-size 32", {}),  # ≈ PPO's KL: 4 epochs ≈ 3× the step
    # longer: 150 updates of 32 prompts at lr 1e-3
    "C ppo λ=0.95 150 updates": ("ppo", "--max-steps 150 --lr 1e-3 --batch-size 32", OLD),
    "C ppo λ=1 150 updates":    ("ppo", "--max-steps 150 --lr 1e-3 --batch-size 32", {"lam": 1.0}),
    "C reinforce 150 updates":  ("reinforce", "--max-steps 150 --lr 1e-3 --batch-size 32", {}),
    "C reinforce lr 3e-3 150 updates": ("reinforce", "--max-steps 150 --lr 3e-3 --batch-size 32", {}),
}

def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--only", nargs="+", help="preset name prefixes, e.g. A B (default: all)")
    p.add_argument("--ppo", help="run PPO with these CLI flags instead of the presets")
    p.add_argument("--reinforce", help="run REINFORCE with these CLI flags instead of the presets")
    p.add_argument("--ppo-set", nargs="*", default=[], help="PPOConfig overrides, e.g. vf_coef=1.0 lam=1.0")
    p.add_argument("--json", help="write every run here")
    p.add_argument("--optimum", action="store_true", help="only print the best possible score and KL at each seed's β")
    a = p.parse_args()
    torch.set_num_threads(1)
    sets = {k: ast.literal_eval(v) for k, v in (s.split("=", 1) for s in a.ppo_set)}
    todo = {}
    if a.ppo is not None: todo["ppo " + a.ppo + " " + " ".join(a.ppo_set)] = ("ppo", a.ppo, sets)
    if a.reinforce is not None: todo["reinforce " + a.reinforce] = ("reinforce", a.reinforce, sets)
    if not todo: todo = {k: v for k, v in PRESETS.items() if not a.only or any(k.startswith(o) for o in a.only)}
    if a.optimum:
        for seed in a.seeds:
            o = optimum(seed, shlex.split(next(iter(todo.values()))[1]))
            print(f"[seed {seed}] best possible: {o['start']:.3f} -> {o['score']:.3f} (+{o['score'] - o['start']:.3f}) at KL {o['kl']:.2f}")
        return
    results = {k: [] for k in todo}
    for seed in a.seeds:                                                  # interleaved: every setting for seed 0, then 1, ...
        for name, (method, flags, over) in todo.items():
            fn = run_ppo if method == "ppo" else run_reinforce
            r = fn(seed, shlex.split(flags), over)
            results[name].append(r)
            ev = f" EV(last 10) {r['ev_last10']:+.2f}" if "ev_last10" in r else ""
            print(f"[seed {seed}] {name}: score {r['before']['score']:.3f} -> {r['after']['score']:.3f}, "
                  f"KL {r['after']['kl']:.2f}, {r['samples']:.0f} samples, {r['seconds']:.0f} s{ev}", flush=True)
    print(f"\n| setting | score start → end | gain | KL (nats) | gain / nat | gain / 1k samples | critic EV | s/run |")
    print("|---|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        s = summarise(runs)
        f = lambda k, d=3: f"{s[k][0]:.{d}f} ± {s[k][1]:.{d}f}" if k != "per_nat" or s["kl"][0] >= 0.1 else "– (KL ≈ 0)"
        ev = f("ev", 2) if "ev" in s else "–"
        print(f"| {name} | {s['start'][0]:.3f} → {s['end'][0]:.3f} | {f('gain')} | {f('kl', 2)} | {f('per_nat')} | "
              f"{f('per_1k')} | {ev} | {s['s'][0]:.0f} |")
    if a.json:
        with open(a.json, "w") as fh: json.dump(results, fh)

if __name__ == "__main__":
    main()
