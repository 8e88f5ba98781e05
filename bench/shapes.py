"""DPO step time and SFT tokens/s at realistic shapes: rlhf_nb vs TRL vs the bare forward/backward floor.

The data: seeded preference pairs and SFT rows with heavy-tailed lengths, log-normal prompts (median 150 tokens) and
responses (median 250), capped so that prompt ≤ max_length // 2 and prompt + response + EOS ≤ max_length; the rows the
cap shortens are counted and printed (none are dropped). Texts are built from words that are one token each, so every
library tokenizes them to exactly the generated lengths (checked). Two vocabularies:
  - "qwen": the real Qwen2.5 tokenizer (151,665 tokens) from ../shared/realworld/tokenizers/qwen2.5-instruct (skipped,
    with a message, when that folder is absent);
  - "small": a 1,000-word word-level tokenizer, as in bench/dpo_bench.py.
The model: a tiny random Llama (hidden 256, 4 layers, 4 heads, tied embeddings) with that vocabulary, fp32, no gradient
checkpointing, the same rows in the same order (no shuffling) and the same batch size for every variant.

Variants, each in its own process (peak RSS above the level before training, via ru_maxrss):
  dpo:  rlhf_nb (response-only logits, `rlhf_nb.core.response_logps`), rlhf_nb_full (USE_RESPONSE_LOGITS = False:
        full (B, T, V) logits), trl (DPOTrainer), bare (plain torch: policy fwd+bwd, reference fwd, loss, AdamW).
        rlhf_nb_pf: rlhf_nb with `DPOConfig(padding_free=True)`: each batch packed into one row of its real tokens.
        rlhf_nb_sp: rlhf_nb with `DPOConfig(shared_prompt=True)`: one row per pair, prompt | chosen | rejected.
  sft:  the same four, with SFTTrainer (prompt-completion rows, loss on the completion). If `rlhf_nb.sft.sft_batch`
        does not call `response_logps` yet, the rlhf_nb variant swaps in `sft_batch_response` below and says so.
        rlhf_nb_pf: `SFTConfig(padding_free=True)`; trl_pf: TRL's `SFTConfig(padding_free=True)`.
TRL 1.16's SFTTrainer packs a padding-free batch into one row with `position_ids` and no attention mask, which
transformers also honours with sdpa on a CPU (its docs recommend FlashAttention, not required); its DPOTrainer turns
`padding_free=True` off with a warning ("temporarily unavailable after a refactor"), so DPO has no trl_pf row.
Packing several rows into fixed-length blocks changes the batches, so it is not compared.
Rounds interleave the variants (the machine is shared and noisy); each ratio uses the median over rounds.

Usage (on a shared 2-core CPU: OMP_NUM_THREADS=1, never two benchmarks at once):
    OMP_NUM_THREADS=1 python bench/shapes.py --quick [--out bench/results/shapes_quick.json]
    OMP_NUM_THREADS=1 python bench/shapes.py [--rounds 2] [--vocabs qwen,small] [--tasks dpo,sft]
"""
import argparse, json, math, os, random, resource, statistics, subprocess, sys, time
from functools import partial
from pathlib import Path

QWEN = Path(__file__).resolve().parents[1] / ".." / "shared" / "realworld" / "tokenizers" / "qwen2.5-instruct"
SMALL_VOCAB = 1000
MODEL = dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=688, max_position_embeddings=2048, seed=0)
FULL = dict(rows=64, batch=4, steps=6, warmup=2, max_length=1024, rounds=2)
QUICK = dict(rows=8, batch=2, steps=2, warmup=1, max_length=192, rounds=1)   # and the Qwen vocabulary only

# ---------------------------------------------------------------------------------------------- data
def tokenizer(vocab):
    "The Qwen2.5 tokenizer, or a word-level one with SMALL_VOCAB words."
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    if vocab == "qwen": return AutoTokenizer.from_pretrained(str(QWEN))
    from tokenizers import Tokenizer, models, pre_tokenizers
    words = ["<|pad|>", "<|endoftext|>"] + [f"w{i}" for i in range(SMALL_VOCAB - 2)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|endoftext|>")

def one_token_words(tok, vocab, n=4000):
    "Strings that are one token each and stay one token when concatenated: ' word' pieces (Qwen) or 'w17 ' words."
    if vocab != "qwen": return [f" w{i}" for i in range(SMALL_VOCAB - 2)]
    cands = [t for t, i in tok.get_vocab().items() if t.startswith("Ġ") and t[1:].isascii() and t[1:].isalpha() and len(t) > 3]
    words = [" " + t[1:] for t in sorted(cands)[:3 * n]]
    return [w for w in words if len(tok(w, add_special_tokens=False)["input_ids"]) == 1][:n]

def lengths(rng, n, median, sigma=0.7):
    "n log-normal lengths (at least 1 token) with the given median: a long right tail."
    return [max(1, round(median * math.exp(sigma * rng.gauss(0, 1)))) for _ in range(n)]

def capped(p, r, max_length):
    "Prompt ≤ max_length // 2, prompt + response + EOS ≤ max_length; returns (p, r, touched)."
    p2 = min(p, max_length // 2); r2 = min(r, max_length - p2 - 1)
    return p2, r2, (p2, r2) != (p, r)

def datasets_for(vocab, rows, max_length, seed=0):
    "Preference rows, SFT rows, and how many rows the cap touched; seeded."
    tok = tokenizer(vocab); words = one_token_words(tok, vocab)
    rng = random.Random(seed)
    text = lambda k: "".join(rng.choice(words) for _ in range(k))
    ps, cs, rs, touched = lengths(rng, rows, 150), lengths(rng, rows, 250), lengths(rng, rows, 250), [0, 0]
    pref, sft = [], []
    for p, c, r in zip(ps, cs, rs):
        p1, c1, t1 = capped(p, c, max_length); p2, r1, t2 = capped(p, r, max_length)
        prompt = text(min(p1, p2)); touched[0] += t1 or t2
        pref.append({"prompt": prompt, "chosen": text(c1), "rejected": text(r1)})
    for p, c in zip(lengths(rng, rows, 150), lengths(rng, rows, 250)):
        p1, c1, t = capped(p, c, max_length); touched[1] += t
        sft.append({"prompt": text(p1), "completion": text(c1)})
    n_tok = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])
    for row in pref[:4] + sft[:4]:                      # every word is one token, also inside a longer text
        assert all(n_tok(v) == len(v.split()) for v in row.values()), "a generated text does not tokenize word by word"
    return pref, sft, {"dpo_rows_capped": touched[0], "sft_rows_capped": touched[1]}

def step_tokens(rows, batch, steps, task):
    "Real (unpadded) tokens per step: prompt + response(s) + EOS, in the order every variant sees the rows."
    n = lambda s: len(s.split())
    per_row = [2 * n(r["prompt"]) + n(r["chosen"]) + n(r["rejected"]) + 2 if task == "dpo" else
               n(r["prompt"]) + n(r["completion"]) + 1 for r in rows]
    return [sum(per_row[i * batch:(i + 1) * batch]) for i in range(steps)]

# ---------------------------------------------------------------------------------------------- the variants
def model(tok):
    from rlhf_nb.models import tiny_llama
    return tiny_llama(tok, **MODEL)

def rss_mib():
    import psutil
    return psutil.Process().memory_info().rss / 2**20

def peak_mib(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def train_cfg(steps, batch):
    import tempfile
    from rlhf_nb.train import TrainConfig
    return TrainConfig(output_dir=tempfile.mkdtemp(), max_steps=steps, batch_size=batch, lr=1e-5, shuffle=False,
                       progress=False, save_final=False, max_grad_norm=None)

def sft_batch_response(model, batch, per_token=False):
    "The SFT step with `response_logps` (the change proposed for rlhf_nb.sft.sft_batch); same loss and metrics."
    from rlhf_nb.core import response_logps, masked_mean
    lp = response_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])      # (B, T-1)
    n_tokens = (batch["labels"] != -100).sum()
    loss = -lp.sum() / n_tokens.clamp(min=1) if per_token else -masked_mean(lp, batch["labels"][:, 1:] != -100, dim=-1).mean()
    return loss, {"nll": loss.detach(), "ppl": loss.detach().exp(), "tokens": n_tokens.float()}

def run_rlhf_nb(task, tok, rows, a, response, padding_free=False, shared_prompt=False):
    import inspect, rlhf_nb.core as core, rlhf_nb.sft as sft_mod
    from rlhf_nb.dpo_trainer import dpo, DPOConfig
    from rlhf_nb.models import frozen_copy
    core.USE_RESPONSE_LOGITS = response
    note = ""
    if task == "sft" and response and "response_logps" not in inspect.getsource(sft_mod.sft_batch):
        sft_mod.sft_batch, note = sft_batch_response, "sft_batch swapped for bench.shapes.sft_batch_response"
    policy = model(tok); ref = frozen_copy(policy) if task == "dpo" else None
    cfg, base = train_cfg(a.steps + a.warmup, a.batch), rss_mib()
    if task == "dpo":
        t = dpo(policy, tok, rows, cfg, DPOConfig(beta=0.1, max_length=a.max_length, max_prompt_length=a.max_length // 2,
                                          padding_free=padding_free, shared_prompt=shared_prompt), ref_model=ref)
    else:
        t = sft_mod.sft(policy, tok, rows, cfg, sft_mod.SFTConfig(max_length=a.max_length, max_prompt_length=a.max_length // 2,
                                                                 padding_free=padding_free))
    return [h["step_time_s"] for h in t.history if "step_time_s" in h], base, note

def padded_batches(task, tok, rows, a):
    "Right-padded (ids, attention_mask, labels) per step, prompts unscored; DPO: chosen rows then rejected rows."
    import torch
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    out = []
    for i in range(a.steps + a.warmup):
        chunk = rows[i * a.batch:(i + 1) * a.batch]
        keys = ("chosen", "rejected") if task == "dpo" else ("completion",)
        seqs = [(enc(r["prompt"]), enc(r[k]) + [tok.eos_token_id]) for k in keys for r in chunk]
        T = max(len(p) + len(c) for p, c in seqs)
        ids = torch.full((len(seqs), T), tok.pad_token_id); labels = torch.full((len(seqs), T), -100)
        am = torch.zeros(len(seqs), T, dtype=torch.long)
        for j, (p, c) in enumerate(seqs):
            ids[j, :len(p) + len(c)] = torch.tensor(p + c); am[j, :len(p) + len(c)] = 1
            labels[j, len(p):len(p) + len(c)] = torch.tensor(c)
        out.append((ids, am, labels))
    return out

def run_bare(task, tok, rows, a, response):
    "The floor: full logits, log_softmax, the loss (DPO with a reference forward), backward, AdamW — plain torch."
    import copy, torch, torch.nn.functional as F
    policy = model(tok); ref = copy.deepcopy(policy).eval().requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    batches = padded_batches(task, tok, rows, a)
    def logps(m, ids, am, labels):
        logits = m(input_ids=ids, attention_mask=am).logits[:, :-1]                              # (B, T-1, V)
        lab = labels[:, 1:]
        lp = logits.log_softmax(-1).gather(-1, lab.clamp(min=0)[..., None]).squeeze(-1)
        return lp * (lab != -100), (lab != -100)
    base, times = rss_mib(), []
    for ids, am, labels in batches:
        t0 = time.perf_counter()
        if task == "dpo":
            pc, pr = logps(policy, ids, am, labels)[0].sum(-1).chunk(2)
            with torch.no_grad(): rc, rr = logps(ref, ids, am, labels)[0].sum(-1).chunk(2)
            loss = -F.logsigmoid(0.1 * ((pc - rc) - (pr - rr))).mean()
        else:
            lp, keep = logps(policy, ids, am, labels)
            loss = -(lp.sum(-1) / keep.sum(-1).clamp(min=1)).mean()
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True); loss.item()
        times.append(time.perf_counter() - t0)
    return times, base, ""

def run_trl(task, tok, rows, a, response, padding_free=False):
    import tempfile, datasets
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback
    from rlhf_nb.models import frozen_copy
    times = []
    class Timer(TrainerCallback):
        def on_step_begin(self, *x, **k): self.t0 = time.perf_counter()
        def on_step_end(self, *x, **k): times.append(time.perf_counter() - self.t0)
    common = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=a.batch, max_steps=a.steps + a.warmup,
                  learning_rate=1e-5, logging_steps=10**6, report_to="none", bf16=False, save_strategy="no",
                  dataloader_num_workers=0, max_grad_norm=0.0, use_cpu=True, disable_tqdm=True, seed=0,
                  gradient_checkpointing=False, max_length=a.max_length, train_sampling_strategy="sequential")
    policy = model(tok); ds = datasets.Dataset.from_list(rows)
    if task == "dpo":
        from trl import DPOConfig, DPOTrainer
        ref = frozen_copy(policy); base = rss_mib()
        trainer = DPOTrainer(model=policy, ref_model=ref, args=DPOConfig(**common), train_dataset=ds,
                             processing_class=tok, callbacks=[Timer()])
    else:
        from trl import SFTConfig, SFTTrainer
        if padding_free: common["max_length"] = None      # TRL refuses a cut it cannot apply; the rows are within it already
        base = rss_mib()
        trainer = SFTTrainer(model=policy, args=SFTConfig(**common, packing=False, padding_free=padding_free), train_dataset=ds,
                             processing_class=tok, callbacks=[Timer()])
    assert isinstance(trainer._get_train_sampler(trainer.train_dataset), SequentialSampler)
    trainer.train()
    return times, base, ""

VARIANTS = {"rlhf_nb": (run_rlhf_nb, True), "rlhf_nb_full": (run_rlhf_nb, False), "trl": (run_trl, False),
            "bare": (run_bare, False), "rlhf_nb_pf": (partial(run_rlhf_nb, padding_free=True), True),
            "trl_pf": (partial(run_trl, padding_free=True), False), "rlhf_nb_sp": (partial(run_rlhf_nb, shared_prompt=True), True)}
ONLY = {"trl_pf": ("sft",), "rlhf_nb_sp": ("dpo",)}           # TRL's DPOTrainer switches padding_free off; SFT has no pairs

def child(a):
    import torch
    torch.manual_seed(0)
    pref, sft, _ = datasets_for(a.vocab, a.rows, a.max_length)
    rows = pref if a.task == "dpo" else sft
    fn, response = VARIANTS[a.child]
    times, base, note = fn(a.task, tokenizer(a.vocab), rows, a, response)
    if len(times) != a.steps + a.warmup: raise SystemExit(f"{a.child}: {len(times)} step times for {a.steps + a.warmup} steps")
    tokens = step_tokens(rows, a.batch, a.steps + a.warmup, a.task)[a.warmup:]
    steady = times[a.warmup:]
    print(json.dumps({"median_step_s": statistics.median(steady), "tokens_per_s": sum(tokens) / sum(steady),
                      "peak_mib_above_start": peak_mib() - base, "note": note}))

# ---------------------------------------------------------------------------------------------- the table
def table(res, tasks, vocabs, variants):
    "Markdown: per task and vocab, median step, tokens/s, peak MiB, and ratios to TRL and to the floor."
    med = lambda xs: statistics.median(xs) if xs else float("nan")
    lines = ["| task | vocab | variant | step (ms) | tokens/s | peak MiB | step / TRL | step / bare | tokens/s vs TRL | peak / TRL | step / rlhf_nb |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for task in tasks:
        for vocab in vocabs:
            r = {v: {k: med([x[k] for x in res.get(f"{task}/{vocab}/{v}", [])]) for k in ("median_step_s", "tokens_per_s",
                 "peak_mib_above_start")} for v in variants}
            ratio = lambda v, k, ref: f"{r[v][k] / r[ref][k]:.2f}" if ref in r and r[ref][k] == r[ref][k] else "–"
            for v in variants:
                if task not in ONLY.get(v, (task,)): continue
                lines.append(f"| {task} | {vocab} | {v} | {1000 * r[v]['median_step_s']:.0f} | {r[v]['tokens_per_s']:.0f} | "
                             f"{r[v]['peak_mib_above_start']:.0f} | {ratio(v, 'median_step_s', 'trl')} | "
                             f"{ratio(v, 'median_step_s', 'bare')} | {ratio(v, 'tokens_per_s', 'trl')} | "
                             f"{ratio(v, 'peak_mib_above_start', 'trl')} | {ratio(v, 'median_step_s', 'rlhf_nb')} |")
    return "\n".join(lines)

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rows and steps, max_length 192, Qwen vocab only: ~4 minutes on a CPU")
    for k, v in FULL.items(): ap.add_argument(f"--{k.replace('_', '-')}", type=int)
    ap.add_argument("--vocabs"); ap.add_argument("--tasks", default="dpo,sft")
    ap.add_argument("--variants", default=",".join(VARIANTS)); ap.add_argument("--out")
    ap.add_argument("--child"); ap.add_argument("--task"); ap.add_argument("--vocab")
    ap.add_argument("--table", help="print the table of a JSON written by --out, and stop")
    a = ap.parse_args()
    if a.table:
        d = json.loads(Path(a.table).read_text()); keys = [k.split("/") for k in d["runs"]]
        uniq = lambda i: list(dict.fromkeys(k[i] for k in keys))
        return print(f"settings: {d['settings']}\n" + table(d["runs"], uniq(0), uniq(1), uniq(2)))
    for k, v in (QUICK if a.quick else FULL).items():
        if getattr(a, k) is None: setattr(a, k, v)
    if a.child: return child(a)
    vocabs = (a.vocabs or ("qwen" if a.quick else "qwen,small")).split(",")
    if "qwen" in vocabs and not (QWEN / "tokenizer.json").exists():
        print(f"skipping the Qwen2.5 vocabulary: {QWEN} is absent (it lives in the shared fixtures, ../shared)")
        vocabs.remove("qwen")
        vocabs = vocabs or ["small"]
    tasks, variants = a.tasks.split(","), a.variants.split(",")
    info = {v: datasets_for(v, a.rows, a.max_length)[2] for v in vocabs}
    for v, i in info.items():
        print(f"{v}: {a.rows} rows per task, max_length {a.max_length}; rows shortened by the cap: "
              f"{i['dpo_rows_capped']} preference, {i['sft_rows_capped']} SFT")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_DISABLE_RICH": "1"}
    res, notes, t_start = {}, set(), time.time()
    for rnd in range(a.rounds):
        order = variants if rnd % 2 == 0 else variants[::-1]              # interleave: alternate the order each round
        for task in tasks:
            for vocab in vocabs:
                for v in order:
                    if task not in ONLY.get(v, (task,)): continue
                    args = [sys.executable, __file__, "--child", v, "--task", task, "--vocab", vocab]
                    for k in FULL: args += [f"--{k.replace('_', '-')}", str(getattr(a, k))]
                    out = subprocess.run(args, capture_output=True, text=True, env=env)
                    if out.returncode: sys.exit(f"{task}/{vocab}/{v} failed:\n{out.stderr[-3000:]}")
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    res.setdefault(f"{task}/{vocab}/{v}", []).append(r)
                    if r["note"]: notes.add(f"{task}/{vocab}/{v}: {r['note']}")
                    print(f"  round {rnd + 1} {task}/{vocab}/{v}: {1000 * r['median_step_s']:.0f} ms/step, "
                          f"{r['peak_mib_above_start']:.0f} MiB ({time.time() - t_start:.0f} s)", flush=True)
                    save(a, res, info, notes)                       # after every child: a stopped run keeps its numbers
    print(f"\nsettings: {settings(a)}")
    for n in sorted(notes): print(f"note: {n}")
    print(table(res, tasks, vocabs, variants))

def settings(a): return {k: getattr(a, k) for k in FULL} | {"model": MODEL, "omp_threads": os.environ.get("OMP_NUM_THREADS")}

def save(a, res, info, notes):
    if not a.out: return
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"settings": settings(a), "capped": info, "notes": sorted(notes), "runs": res}, indent=1))

if __name__ == "__main__": main()
