"""PPO and GRPO at a real vocabulary: seconds per update and peak memory with response-only logits (the default) against
the full-logits path (`rlhf_nb.core.USE_RESPONSE_LOGITS = False`, what every PPO/GRPO forward computed before), on the
same tiny models and prompts.

Setting: the Qwen2.5 tokenizer (151,665 tokens, from ../shared/realworld/tokenizers/qwen2.5-instruct; the script exits
with a message when it is absent); a Llama policy (hidden 256, 4 layers, 4 heads, untied head) and, for PPO, a separate
critic and reward model (hidden 128, 2 layers); 8 prompts per update, 32 new tokens at temperature 0.7; PPO: 4 epochs of
1 minibatch; GRPO: k = 4 completions per prompt, beta = 0.04 (a reference pass per rollout), on-policy. fp32 on the CPU.
Each run is its own process (peak RSS is per process); the variants alternate within each round. Usage:
    OMP_NUM_THREADS=1 python bench/rl_vocab.py [--updates 3] [--warmup 1] [--rounds 2] [--algos ppo,grpo]
"""
import argparse, json, os, resource, statistics, subprocess, sys, tempfile
from pathlib import Path

QWEN = Path(__file__).resolve().parents[1] / ".." / "shared" / "realworld" / "tokenizers" / "qwen2.5-instruct"
PROMPTS, NEW = 8, 32

def models():
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification
    tok = AutoTokenizer.from_pretrained(str(QWEN))
    if tok.pad_token is None: tok.pad_token = tok.eos_token
    def llama(cls, hidden, layers, seed):
        torch.manual_seed(seed)
        return cls(LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
                               num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False, num_labels=1,
                               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    policy = llama(LlamaForCausalLM, 256, 4, 0)
    rm, value = llama(LlamaForSequenceClassification, 128, 2, 1), llama(LlamaForSequenceClassification, 128, 2, 2)
    torch.nn.init.zeros_(value.score.weight)
    prompts = [{"prompt": f"Review {i}: the film was"} for i in range(64)]
    return tok, policy, rm, value, prompts

def child(algo: str, full: bool, updates: int) -> list[float]:
    import torch
    import rlhf_nb.core as core
    from rlhf_nb.train import TrainConfig
    core.USE_RESPONSE_LOGITS = not full
    torch.manual_seed(0)
    tok, policy, rm, value, prompts = models()
    cfg = TrainConfig(output_dir=tempfile.mkdtemp(), max_steps=updates, batch_size=PROMPTS, lr=1e-5, progress=False,
                      save_final=False, max_grad_norm=None)
    if algo == "ppo":
        from rlhf_nb.ppo_trainer import ppo, PPOConfig
        t = ppo(policy, tok, prompts, reward_model=rm, value_model=value, config=cfg,
                ppo_config=PPOConfig(max_new_tokens=NEW, temperature=0.7, ppo_epochs=4, num_minibatches=1))
        steps = [h["step_time_s"] for h in t.history]
        return [sum(steps[i:i + 4]) for i in range(0, len(steps), 4)]
    from rlhf_nb.grpo import grpo, GRPOConfig
    letters = lambda ps, cs: [c.count("e") / 10 for c in cs]
    t = grpo(policy, tok, prompts, letters, config=cfg,
             grpo_config=GRPOConfig(num_generations=4, max_new_tokens=NEW, temperature=0.7, beta=0.04))
    return [h["step_time_s"] for h in t.history]

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--updates", type=int, default=3); ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2); ap.add_argument("--algos", default="ppo,grpo")
    ap.add_argument("--child", nargs=2, metavar=("ALGO", "PATH"))
    a = ap.parse_args()
    if a.child:
        times = child(a.child[0], a.child[1] == "full", a.updates + a.warmup)[a.warmup:]
        print(json.dumps({"s": statistics.median(times), "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return
    if not (QWEN / "tokenizer.json").exists(): sys.exit(f"bench/rl_vocab.py needs the Qwen2.5 tokenizer at {QWEN}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = {}
    for r in range(a.rounds):
        for algo in a.algos.split(","):
            for path in (("response", "full") if r % 2 == 0 else ("full", "response")):
                out = subprocess.run([sys.executable, __file__, "--child", algo, path, "--updates", str(a.updates),
                                      "--warmup", str(a.warmup)], capture_output=True, text=True, env=env)
                if out.returncode: sys.exit(f"{algo} {path} failed:\n{out.stderr[-3000:]}")
                res.setdefault((algo, path), []).append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"round {r} {algo} {path}: {res[(algo, path)][-1]}", file=sys.stderr, flush=True)
    print("| algorithm | s/update: response-only / full logits (ratio) | per round | peak MiB: response-only / full |\n|---|---|---|---|")
    for algo in a.algos.split(","):
        R, F = res[(algo, "response")], res[(algo, "full")]
        med = lambda xs, k: statistics.median(x[k] for x in xs)
        print(f"| {algo.upper()} | {med(R, 's'):.2f} / {med(F, 's'):.2f} ({med(R, 's') / med(F, 's'):.2f}) | "
              + ", ".join(f"{x['s'] / y['s']:.2f}" for x, y in zip(R, F))
              + f" | {med(R, 'peak_mib'):.0f} / {med(F, 'peak_mib'):.0f} |")

if __name__ == "__main__": main()
