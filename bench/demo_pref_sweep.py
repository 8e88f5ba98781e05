"""The preference stage of the quick demo, rerun at other settings: how the learning rate and beta of the quick
`rlhf_nb demo` were chosen (21_demo, "Why these settings").

For one seed, the script builds the quick demo's SFT policy and preference pairs exactly as `rlhf_nb demo --quick --seed S`
does (cached in OUT/stage.pt after the first run), then trains each candidate below from that SFT policy on those pairs
for the demo's `pref_steps` and judges it as the demo does: gold-reward gain over the SFT policy and the mean KL (nats per
sequence, with its p95 tail) on the held-out prompts. At the quick defaults it reproduces the demo's own numbers.
Usage (about 1 minute per candidate on one CPU thread):
    OMP_NUM_THREADS=1 python bench/demo_pref_sweep.py --seed 0 --out /tmp/sweep [--only dpo_b1_lr3e-4,simpo_lr1.5e-4]
"""
import argparse, json, time
from pathlib import Path
import torch
from rlhf_nb.demo import DemoConfig, evaluate_policy, _sft_stage, _pairs_stage, _tc, _oracle
from rlhf_nb.models import load_causal_lm
from rlhf_nb.dpo_trainer import dpo, DPOConfig
from rlhf_nb.ipo import ipo, IPOConfig
from rlhf_nb.kto import kto, KTOConfig
from rlhf_nb.simpo import simpo, SimPOConfig
from rlhf_nb.orpo import orpo, ORPOConfig

# name: (trainer, its config, learning rate); all at the demo's max_length and (where used) a precomputed reference
CANDIDATES = {
    "dpo_b1_lr5e-4": (dpo, DPOConfig(beta=1.0, max_length=48, precompute_ref=True), 5e-4),
    "dpo_b1_lr3e-4": (dpo, DPOConfig(beta=1.0, max_length=48, precompute_ref=True), 3e-4),
    "dpo_b1_lr2.5e-4": (dpo, DPOConfig(beta=1.0, max_length=48, precompute_ref=True), 2.5e-4),
    "dpo_b1.5_lr5e-4": (dpo, DPOConfig(beta=1.5, max_length=48, precompute_ref=True), 5e-4),
    "dpo_b2_lr5e-4": (dpo, DPOConfig(beta=2.0, max_length=48, precompute_ref=True), 5e-4),
    "ipo_t0.1_lr5e-4": (ipo, IPOConfig(tau=0.1, max_length=48, precompute_ref=True), 5e-4),
    "ipo_t0.1_lr3e-4": (ipo, IPOConfig(tau=0.1, max_length=48, precompute_ref=True), 3e-4),
    "kto_b1_lr5e-4": (kto, KTOConfig(beta=1.0, max_length=48, precompute_ref=True), 5e-4),
    "kto_b1_lr3e-4": (kto, KTOConfig(beta=1.0, max_length=48, precompute_ref=True), 3e-4),
    "kto_b2_lr5e-4": (kto, KTOConfig(beta=2.0, max_length=48, precompute_ref=True), 5e-4),
    "orpo_l2_lr3e-4": (orpo, ORPOConfig(lam=2.0, max_length=48), 3e-4),
    "simpo_lr1e-4": (simpo, SimPOConfig(beta=2.0, gamma=1.0, max_length=48), 1e-4),
    "simpo_lr1.5e-4": (simpo, SimPOConfig(beta=2.0, gamma=1.0, max_length=48), 1.5e-4),
    "simpo_lr2e-4": (simpo, SimPOConfig(beta=2.0, gamma=1.0, max_length=48), 2e-4),
}

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0); ap.add_argument("--out", required=True)
    ap.add_argument("--only", help="comma-separated candidate names (default: all): " + ", ".join(CANDIDATES))
    a = ap.parse_args()
    names = a.only.split(",") if a.only else list(CANDIDATES)
    if bad := [n for n in names if n not in CANDIDATES]: ap.error(f"--only: unknown {bad}; choose from {list(CANDIDATES)}")
    cfg, out = DemoConfig.quick(), Path(a.out); cfg.seed = a.seed; out.mkdir(parents=True, exist_ok=True)
    stage = out / "stage.pt"
    if stage.exists(): tok, held, sft_dir, rows, eval_prompts = torch.load(stage, weights_only=False)
    else:
        tok, held, sft_dir = _sft_stage(cfg, out)
        rows, report, eval_prompts, _ = _pairs_stage(cfg, tok, sft_dir, held)
        torch.save((tok, held, sft_dir, rows, eval_prompts), stage); print(report, flush=True)
    train_pairs = rows[max(len(rows) // 10, 2):]                          # the demo holds the first tenth out
    sft = load_causal_lm(str(sft_dir))
    judge = lambda m: evaluate_policy(m, sft, tok, eval_prompts, oracle=_oracle(cfg), n_samples=cfg.n_eval_samples,
                                      max_new_tokens=cfg.max_new_tokens, kl_limit=cfg.kl_limit, seed=cfg.seed)
    base, results = judge(sft)["oracle_reward"], {}
    for name in names:
        fn, obj_cfg, lr = CANDIDATES[name]
        t0 = time.time()
        model = fn(load_causal_lm(str(sft_dir)), tok, train_pairs, _tc(out, name, cfg.pref_steps, 32, lr, cfg.seed, warmup=cfg.pref_steps // 10), obj_cfg).model
        r = judge(model.eval())
        results[name] = {"gain": round(r["oracle_reward"] - base, 3), "kl_mean": round(r["kl_mean"], 2),
                         "kl_p95": round(r["kl_p95"], 2), "seconds": round(time.time() - t0)}
        print(a.seed, name, results[name], flush=True)
        (out / f"sweep_seed{a.seed}.json").write_text(json.dumps(results, indent=1))

if __name__ == "__main__": main()
