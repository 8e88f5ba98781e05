"""GRPO and RLOO: seconds per update of rlhf_nb's `grpo` / `rloo` against TRL 1.16's `GRPOTrainer` / `RLOOTrainer`,
on the same tiny Llama, prompts, reward function and sampling settings.

Setting: a Llama policy (hidden 256, 4 layers, 4 heads) over a 1,000-token BPE vocabulary, saved with save_pretrained
so that both libraries load the same weights from disk; 8 prompts per update with k = 8 completions each (64 per
optimizer step, one rollout per step, one pass: on-policy), at most 32 new tokens, temperature 1.0 without top-k/top-p,
a Python reward (the number of letters "e" in the completion), AdamW at a constant learning rate, gradient clipping at
1.0, fp32, no gradient checkpointing, no vLLM: both sample with `model.generate` and its KV cache. Two settings of the
KL coefficient: beta = 0 (no reference model) and beta = 0.04 (a frozen reference is scored on every rollout). GRPO uses
token-level aggregation (TRL's loss_type="dapo") and group-std scaling on both sides; RLOO uses the leave-one-out
baseline with the KL (k1, summed over the response) subtracted from the reward on both sides.

One update = one optimizer step and the rollout it starts (sampling, rewards, the reference and old-policy scoring,
forward, backward, optimizer). Three timings per update:
  cpu   this process's CPU time between the ends of consecutive updates, from a callback: the least sensitive to other
        people's jobs on a shared machine (with one torch thread; with more it also counts the threads' spinning);
  wall  the wall clock between the same marks (the same definition for both libraries; it also covers the data loader
        and each library's logging);
  own   each library's own record: rlhf_nb's `step_time_s` (the whole step) and TRL's `step_time` (its training_step:
        generation, scoring, forward and backward, without the optimizer step).
Each run is its own process (its own model, trainer, RNG and allocator), forked from a parent that has imported the
libraries once: the imports alone take about 20 s on a loaded 2-core machine, and 16 of them would blow the time budget.
The first `--warmup` updates of each run are dropped; the runs of a pair are interleaved A B, B A, A B ... over
`--repeats` (a shared, noisy machine drifts; the mirrored order cancels a steady drift). The table gives
the median seconds per update over all kept updates of all repeats and the ratio rlhf_nb / TRL of those medians, then
the CPU ratio of each repeat's adjacent pair of runs (their spread shows the noise); the last line is every number as
JSON. Each TRL run checks that its settings are the ones above (completions per step, generation batch,
completion length, no vLLM, no gradient checkpointing) and each run counts the forward calls of length 1 made while
sampling, the sign that the KV cache is used. Usage (5 to 6 minutes on 2 shared cores with the defaults):
    pip install -e ".[dev,bench]"
    OMP_NUM_THREADS=1 python bench/grpo_bench.py [--updates 3] [--warmup 1] [--repeats 2] [--betas 0,0.04]
                                                 [--algos grpo,rloo] [--json out.json] [--logps-from-sampler]
"""
import argparse, json, os, shutil, statistics, sys, tempfile, time

PROMPTS, K, NEW, LR = 8, 8, 32, 1e-5
SAMPLER = False   # --logps-from-sampler: rlhf_nb takes the policy's log-probs from the sampler (RLOO's KL: one pass less)

def save_model(folder: str):
    "The policy and its tokenizer, written once with save_pretrained: every run loads the same weights."
    from rlhf_nb.models import tiny_tokenizer, tiny_llama
    tok = tiny_tokenizer(vocab_size=1000)
    tiny_llama(tok, hidden_size=256, num_layers=4, num_heads=4, seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)

def prompts(n: int = 256) -> list[str]:
    return [f"The movie number {i} was" for i in range(n)]

def letter_e(prompts, completions, **kwargs):
    "Reward: how many letters 'e' the completion holds, a tenth each."
    return [c.count("e") / 10 for c in completions]

class CallCounter:
    "Forward pre-hook: counts the policy's forward calls with grad off, and those fed a single new token (KV cache)."
    def __init__(self): self.calls, self.single = 0, 0
    def __call__(self, module, args, kwargs):
        import torch
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and not torch.is_grad_enabled():
            self.calls += 1; self.single += int(ids.shape[1] == 1)

class Marks:
    "The wall clock and this process's CPU clock at the end of every update."
    def __init__(self): self.wall, self.cpu = [], []
    def __call__(self, *args, **kwargs): self.wall.append(time.perf_counter()); self.cpu.append(time.process_time())
    def per_update(self, warmup: int) -> dict:
        "Seconds per update, wall and CPU, from consecutive ends; the first `warmup` updates dropped (warmup >= 1)."
        diff = lambda t: [b - a for a, b in zip(t, t[1:])][warmup - 1:]
        return {"wall": diff(self.wall), "cpu": diff(self.cpu)}

# ---------------------------------------------------------------------------------------------- the variants
def run_rlhf_nb(folder, algo, beta, steps, warmup):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from rlhf_nb.grpo import grpo, rloo, GRPOConfig
    from rlhf_nb.train import TrainConfig
    tok, policy = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    counter, marks = CallCounter(), Marks()
    policy.register_forward_pre_hook(counter, with_kwargs=True)
    class Timer:
        def on_step_end(self, trainer, row): marks()
    cfg = TrainConfig(output_dir=tempfile.mkdtemp(), max_steps=steps, batch_size=PROMPTS, lr=LR, schedule="constant",
                      max_grad_norm=1.0, progress=False, save_final=False, log_every=1)
    gcfg = GRPOConfig(num_generations=K, max_new_tokens=NEW, temperature=1.0, beta=beta, scale_rewards=True,
                      # RLOO: Σ over all response tokens / (B·max_new_tokens), TRL's per-sequence sum over B up to 1/32
                      loss_aggregation="token" if algo == "grpo" else "constant", logps_from_sampler=SAMPLER)
    t = (grpo if algo == "grpo" else rloo)(policy, tok, [{"prompt": p} for p in prompts()], letter_e, config=cfg,
                                           grpo_config=gcfg, callbacks=[Timer()])
    h = t.history
    return {**marks.per_update(warmup), "own": [r["step_time_s"] for r in h][warmup:],
            "completion_len": statistics.fmean(r["completions/mean_length"] for r in h),
            "completions_per_step": PROMPTS * gcfg.num_generations, "no_grad_calls": counter.calls,
            "single_token_calls": counter.single}

def trl_args(algo, beta, steps):
    "TRL's config for the setting above; every field that would differ from rlhf_nb by default is set explicitly."
    if algo == "grpo": from trl import GRPOConfig as C; extra = dict(loss_type="dapo", scale_rewards="group")
    else: from trl import RLOOConfig as C; extra = dict(normalize_advantages=False)
    return C(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=PROMPTS * K, gradient_accumulation_steps=1,
             steps_per_generation=1, num_generations=K, num_iterations=1, max_completion_length=NEW, temperature=1.0,
             top_p=1.0, top_k=0, beta=beta, epsilon=0.2, learning_rate=LR, lr_scheduler_type="constant",
             warmup_steps=0, max_grad_norm=1.0, weight_decay=0.0, max_steps=steps, logging_steps=1, report_to="none",
             save_strategy="no", use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
             disable_dropout=True, use_vllm=False, log_completions=False, dataloader_num_workers=0, seed=0, **extra)

def check_trl(trainer, args):
    "Fail unless TRL runs the setting above: 64 completions per optimizer step from one generation, 32 tokens, no vLLM."
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    checks = {"completions per optimizer step": (per_step, PROMPTS * K),
              "generation_batch_size": (args.generation_batch_size, PROMPTS * K),
              "steps_per_generation": (args.steps_per_generation, 1), "num_iterations": (args.num_iterations, 1),
              "max_completion_length": (args.max_completion_length, NEW), "use_vllm": (trainer.use_vllm, False),
              "continuous batching": (args.use_transformers_continuous_batching, False),
              "gradient_checkpointing": (args.gradient_checkpointing, False),
              "generation use_cache off": (trainer.generation_config.use_cache is False, False),   # None means on
              "model dtype": (str(trainer.model.dtype), "torch.float32"), "device": (trainer.model.device.type, "cpu")}
    bad = {k: v for k, v in checks.items() if v[0] != v[1]}
    if bad: raise SystemExit(f"TRL's settings differ from the benchmark's (got, wanted): {bad}")

def run_trl(folder, algo, beta, steps, warmup):
    import datasets
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer, RLOOTrainer
    args, marks, counter = trl_args(algo, beta, steps), Marks(), CallCounter()
    class Timer(TrainerCallback):
        def on_step_end(self, *a, **k): marks()
    tok = AutoTokenizer.from_pretrained(folder, padding_side="left")
    trainer = (GRPOTrainer if algo == "grpo" else RLOOTrainer)(
        model=folder, reward_funcs=letter_e, args=args, processing_class=tok, callbacks=[Timer()],
        train_dataset=datasets.Dataset.from_dict({"prompt": prompts()}))
    check_trl(trainer, args)
    trainer.model.register_forward_pre_hook(counter, with_kwargs=True)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "step_time" in h]
    return {**marks.per_update(warmup), "own": [h["step_time"] for h in logs][warmup:],
            "completion_len": statistics.fmean(h["completions/mean_length"] for h in logs),
            "completions_per_step": args.per_device_train_batch_size * args.gradient_accumulation_steps,
            "no_grad_calls": counter.calls, "single_token_calls": counter.single}

LIBS = {"rlhf_nb": run_rlhf_nb, "trl": run_trl}

# ---------------------------------------------------------------------------------------------- the driver
def _child(conn, lib, folder, algo, beta, steps, warmup):
    "One run in a forked process: its own model, trainer, RNG and allocator; the result goes back through `conn`."
    try:
        null = os.open(os.devnull, os.O_WRONLY); os.dup2(null, 1); os.dup2(null, 2)   # progress bars and log lines
        import torch; torch.manual_seed(0)
        conn.send({"lib": lib, "algo": algo, "beta": beta, **LIBS[lib](folder, algo, beta, steps, warmup)})
    except BaseException as e:
        import traceback; conn.send({"error": f"{lib} {algo} beta={beta}: {e!r}\n{traceback.format_exc()[-3000:]}"})
    finally: conn.close()

def run_child(lib, folder, algo, beta, steps, warmup) -> dict:
    "Fork, run one variant, return its numbers (exit with its traceback if it failed)."
    import multiprocessing as mp
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(send, lib, folder, algo, beta, steps, warmup)); p.start(); send.close()
    res = recv.recv() if recv.poll(None) else {"error": f"{lib} {algo} beta={beta}: the process died (exit {p.exitcode})"}
    p.join()
    if "error" in res: sys.exit(res["error"])
    return res

def preload():
    "Import what every run needs once, in the parent (about 20 s each time on a loaded 2-core machine); no torch op runs here."
    import datasets, transformers, trl, rlhf_nb.grpo, rlhf_nb.train                       # noqa: F401
    from transformers import AutoModelForCausalLM, LlamaForCausalLM, TrainerCallback       # noqa: F401
    from trl import GRPOTrainer, RLOOTrainer, GRPOConfig, RLOOConfig                       # noqa: F401

MEASURES = ("cpu", "wall", "own")

def table(runs: list[dict], algos, betas) -> tuple[str, dict]:
    "Markdown table of median seconds per update (CPU, wall, own) and the ratios rlhf_nb / TRL; and the same as a dict."
    lines = ["| algorithm | beta | " + " | ".join(f"{m}: rlhf_nb / TRL s/update (ratio)" for m in MEASURES)
             + " | cpu ratio per repeat | mean completion tokens (rlhf_nb / TRL) |", "|---|---|" + "---|" * (len(MEASURES) + 2)]
    summary = {}
    for algo in algos:
        for beta in betas:
            pick = lambda lib: [r for r in runs if (r["lib"], r["algo"], r["beta"]) == (lib, algo, beta)]
            med = lambda lib, key: statistics.median(x for r in pick(lib) for x in r[key])
            s = {f"{lib}_{m}": med(lib, m) for lib in LIBS for m in MEASURES}
            s.update({f"ratio_{m}": s[f"rlhf_nb_{m}"] / s[f"trl_{m}"] for m in MEASURES})
            s.update({f"len_{lib}": statistics.fmean(r["completion_len"] for r in pick(lib)) for lib in LIBS})
            s["ratio_cpu_per_repeat"] = [statistics.median(a["cpu"]) / statistics.median(b["cpu"])
                                         for a, b in zip(pick("rlhf_nb"), pick("trl"))]   # runs in order: one pair per repeat
            summary[f"{algo} beta={beta}"] = s
            cells = [f"{s[f'rlhf_nb_{m}']:.2f} / {s[f'trl_{m}']:.2f} (**{s[f'ratio_{m}']:.2f}**)" for m in MEASURES]
            lines.append(f"| {algo.upper()} | {beta} | " + " | ".join(cells) + " | "
                         + ", ".join(f"{x:.2f}" for x in s["ratio_cpu_per_repeat"])
                         + f" | {s['len_rlhf_nb']:.1f} / {s['len_trl']:.1f} |")
    return "\n".join(lines), summary

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--updates", type=int, default=3, help="timed updates per run, after the warmup")
    ap.add_argument("--warmup", type=int, default=1, help="updates dropped at the start of each run (>= 1)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each variant, interleaved")
    ap.add_argument("--betas", default="0,0.04", help="KL coefficients, comma-separated")
    ap.add_argument("--algos", default="grpo,rloo", help="grpo and/or rloo, comma-separated")
    ap.add_argument("--json", help="also write every run's numbers to this file")
    ap.add_argument("--logps-from-sampler", action="store_true", help="rlhf_nb with GRPOConfig(logps_from_sampler=True)")
    a = ap.parse_args()
    global SAMPLER; SAMPLER = a.logps_from_sampler                        # read by the forked runs
    if a.warmup < 1: ap.error("--warmup must be >= 1: the first update's wall time has no start mark")
    algos, betas = a.algos.split(","), [float(b) for b in a.betas.split(",")]
    if not set(algos) <= {"grpo", "rloo"}: ap.error(f"--algos {a.algos}: choose among grpo, rloo")
    os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TRL_EXPERIMENTAL_SILENCE="1")
    t0 = time.perf_counter(); preload()
    tempfile.tempdir = tempfile.mkdtemp(prefix="grpo_bench_")            # every run's folders go here, removed at the end
    folder = tempfile.mkdtemp(prefix="model_")
    p = __import__("multiprocessing").get_context("fork").Process(target=save_model, args=(folder,)); p.start(); p.join()
    runs, steps = [], a.updates + a.warmup
    for rep in range(a.repeats):
        order = list(LIBS) if rep % 2 == 0 else list(LIBS)[::-1]          # A B, then B A: a steady drift cancels
        for algo in algos:
            for beta in betas:
                for lib in order:
                    r = run_child(lib, folder, algo, beta, steps, a.warmup); runs.append(r)
                    med = {m: statistics.median(r[m]) for m in MEASURES}
                    print(f"repeat {rep} {lib:8s} {algo} beta={beta}: median cpu {med['cpu']:.3f} s, wall {med['wall']:.3f} s, "
                          f"own {med['own']:.3f} s; no-grad forward calls {r['no_grad_calls']}, of one token (KV cache) "
                          f"{r['single_token_calls']}", file=sys.stderr, flush=True)
    text, summary = table(runs, algos, betas)
    print(text)
    print(f"\n{a.repeats} repeats x {a.updates} timed updates (+{a.warmup} warmup) per variant, {PROMPTS} prompts x "
          f"k={K}, {NEW} new tokens, torch threads {__import__('torch').get_num_threads()}; total {time.perf_counter() - t0:.0f} s")
    result = {"setting": {"prompts": PROMPTS, "k": K, "max_new_tokens": NEW, "updates": a.updates, "warmup": a.warmup,
                          "repeats": a.repeats, "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
              "summary": summary, "runs": runs}
    if a.json: open(a.json, "w").write(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("setting", "summary")}))
    shutil.rmtree(tempfile.tempdir, ignore_errors=True)

if __name__ == "__main__": main()
