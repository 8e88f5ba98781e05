"The addition task: problem splits, the checker, the tokenizer's save/load round trip, and the warm start's policy as later stages use it (greedy accuracy against a hand loop, a checkpoint reopened, the reward reached through the RL trainer)."
import tempfile
import pytest, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from rlhf_nb.arithmetic import (ArithmeticConfig, accuracy, arithmetic_tokenizer, carries, exact_match, generate_completions,
                                make_splits, n_problems, warm_start)

def _pair(row: dict) -> frozenset:
    return frozenset(map(int, row["prompt"][:-1].split("+")))

@pytest.fixture(scope="module")
def ws():
    "The demo's warm start, saved to a folder (about 10 s on one core)."
    out = tempfile.mkdtemp(prefix="arith-test-")
    return warm_start(ArithmeticConfig(seed=0), output_dir=out), out

# ---------------------------------------------------------------- problems
@pytest.mark.parametrize("digits,sizes", [(1, (30, 10, 5)), (2, (3000, 500, 200)), (3, (2000, 300, 100))])
def test_splits_are_deterministic_disjoint_and_correct(digits, sizes):
    n_train, n_eval, n_val = sizes
    s = make_splits(n_train, n_eval, n_val, digits=digits, seed=3)
    assert s == make_splits(n_train, n_eval, n_val, digits=digits, seed=3)
    assert s.held_out != make_splits(n_train, n_eval, n_val, digits=digits, seed=4).held_out
    assert [len(x) for x in s] == [n_train, n_val, n_eval]
    pairs = [{_pair(r) for r in part} for part in s]
    assert [len(p) for p in pairs] == [n_train, n_val, n_eval]              # no problem twice, not even as b+a
    assert not (pairs[0] & pairs[1] or pairs[0] & pairs[2] or pairs[1] & pairs[2])
    for r in (r for part in s for r in part):
        a, b = map(int, r["prompt"][:-1].split("+"))
        assert r["prompt"] == f"{a}+{b}=" and r["answer"] == str(a + b) and len(str(a)) == len(str(b)) == digits

def test_held_out_set_does_not_move_when_the_training_set_grows():
    small, big = make_splits(10, 200, 50, seed=0), make_splits(3000, 200, 50, seed=0)
    assert small.held_out == big.held_out and small.val == big.val and big.train[:10] == small.train

def test_every_problem_can_be_drawn_and_no_more():
    assert len({_pair(r) for r in make_splits(n_problems(1), 0, digits=1).train}) == 45
    with pytest.raises(ValueError, match="only 45 distinct 1-digit problems"): make_splits(40, 6, digits=1)
    with pytest.raises(ValueError, match="digits=0"): make_splits(1, 1, digits=0)

def test_carries_by_hand():
    assert [carries(12, 34), carries(19, 1), carries(85, 37), carries(999, 1), carries(5, 5)] == [0, 1, 2, 3, 1]

# ---------------------------------------------------------------- checker
def test_exact_match_cases():
    cases = {"122": 1.0, " 122\n": 1.0, "122<|endoftext|>": 1.0, "122<|endoftext|>99": 1.0,
             "123": 0.0, "1225": 0.0, "122+": 0.0, "122 7": 0.0, "": 0.0, "  ": 0.0, "<|endoftext|>": 0.0,
             "0122": 0.0, "+122": 0.0, "1_22": 0.0, "122.0": 0.0}
    assert exact_match(["37+85="] * len(cases), list(cases), ["122"] * len(cases), level=[0] * len(cases)) == list(cases.values())
    assert exact_match(["9+9="], ["18"], [18]) == [1.0]
    with pytest.raises(ValueError, match="2 prompts, 1 completions and 2 answers"): exact_match(["a", "b"], ["1"], ["1", "2"])

# ---------------------------------------------------------------- tokenizer
def test_tokenizer_round_trip_through_save_pretrained(tmp_path):
    tok = arithmetic_tokenizer()
    texts = ["37+85=122", "0+0=0", "999+1=1000"]
    tok.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path)
    assert back(texts)["input_ids"] == tok(texts)["input_ids"] == [[tok.convert_tokens_to_ids(ch) for ch in t] for t in texts]
    assert [back.decode(x) for x in back(texts)["input_ids"]] == texts
    assert (back.pad_token, back.eos_token, back.pad_token_id, back.eos_token_id) == ("<|pad|>", "<|endoftext|>", 0, 1)
    assert back.convert_ids_to_tokens(back("1 a")["input_ids"]) == ["1", "<|unk|>", "<|unk|>"]

# ---------------------------------------------------------------- the warm start's policy
def _hand_completion(model, tok, prompt: str, max_new_tokens: int = 4) -> str:
    "One prompt alone (no padding), greedy, cut at EOS."
    ids = tok(prompt, return_tensors="pt")["input_ids"].to(model.device)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[0, ids.shape[1]:].tolist()
    return tok.decode(out[:out.index(tok.eos_token_id)] if tok.eos_token_id in out else out)

def test_warm_start_stops_in_the_jump(ws):
    w, _ = ws
    assert w.checks and w.checks[-1][1] >= 0.3 and all(a < 0.3 for _, a in w.checks[:-1])
    assert w.trainer.step == w.checks[-1][0] < 800

def test_accuracy_matches_a_hand_loop_over_generate(ws):
    w, _ = ws
    rows = w.splits.held_out[:200]
    batched = [c[0] for c in generate_completions(w.policy, w.tokenizer, [r["prompt"] for r in rows], batch_size=37)]
    w.policy.eval()
    with torch.no_grad(): hand = [_hand_completion(w.policy, w.tokenizer, r["prompt"]) for r in rows]
    w.policy.train()
    assert batched == hand                                                     # left padding and batching change nothing
    right = [h == r["answer"] for h, r in zip(hand, rows)]
    assert 0 < sum(right) < len(rows)                                          # a comparison that could tell them apart
    assert accuracy(w.policy, w.tokenizer, rows, batch_size=64) == sum(right) / len(rows)

def test_saved_warm_start_reopens_with_the_same_score(ws):
    w, out = ws
    model = AutoModelForCausalLM.from_pretrained(f"{out}/final")
    tok = AutoTokenizer.from_pretrained(f"{out}/final")
    rows = w.splits.held_out
    assert accuracy(model, tok, rows) == accuracy(w.policy, w.tokenizer, rows)

def test_the_rl_trainer_hands_the_answer_column_to_the_checker(ws):
    "Prompt-only rows {prompt, answer} as GRPO reads them: the reward it logs is exact_match of its own samples."
    from rlhf_nb.grpo import grpo, GRPOConfig
    from rlhf_nb.train import TrainConfig
    w, _ = ws
    seen = []
    def checked(prompts, completions, answer, **columns):
        seen.append((list(prompts), list(completions), list(answer)))
        return exact_match(prompts, completions, answer)
    policy = AutoModelForCausalLM.from_pretrained(f"{ws[1]}/final")               # a copy: the shared fixture stays as it was
    tr = grpo(policy, w.tokenizer, w.splits.train[:64], reward_fns=[checked],
              config=TrainConfig(output_dir=tempfile.mkdtemp(), max_steps=3, batch_size=8, lr=1e-4, progress=False, save_final=False),
              grpo_config=GRPOConfig(num_generations=4, max_new_tokens=4))
    truth = {r["prompt"]: r["answer"] for r in w.splits.train[:64]}
    assert len(seen) == 3 and all(len(c) == 32 for _, c, _ in seen)
    assert all(truth[p] == a for ps, _, ans in seen for p, a in zip(ps, ans))  # each completion arrives with its own problem's answer
    rewards = [x for ps, cs, ans in seen for x in exact_match(ps, cs, ans)]
    assert 0 < sum(rewards) < len(rewards)
    logged = [h["reward"] for h in tr.history if "reward" in h]
    assert logged == pytest.approx([sum(exact_match(*s)) / 32 for s in seen])

# ---------------------------------------------------------------- the demo, as a user runs it
import json, os, shutil, subprocess
from pathlib import Path

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    "`rlhf_nb demo --task arithmetic --tiny`: every stage on sizes too small to learn (seconds)."
    out = tmp_path_factory.mktemp("arith-demo") / "run"
    r = subprocess.run(["rlhf_nb", "demo", "--task", "arithmetic", "--out", str(out), "--tiny", "--quiet", "--seed", "3"],
                       env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "KL mean ± CI95" in r.stdout and "warm start stopped at SFT step" in r.stdout and "report:" in r.stdout
    return out

def test_demo_metrics(demo_dir):
    m = json.loads((demo_dir / "metrics.json").read_text())
    assert m["config"]["seed"] == 3 and m["config"]["methods"] == ["grpo", "rloo"]
    n = m["config"]["task"]["n_eval"]
    for k in ("sft", "grpo", "rloo"):
        r = m[k]
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["pass@1"] <= r["pass@2"] <= 1
        assert r["kl_ci95"] >= 0 and r["kl_p95"] >= r["kl_median"] and r["n_samples"] == n * m["config"]["n_kl_samples"]
        assert r["accuracy"] * n == pytest.approx(round(r["accuracy"] * n))      # a share of the n held-out problems
    assert abs(m["sft"]["kl_mean"]) < 1e-5                                        # the warm start against itself
    for k in ("grpo", "rloo"):                                                    # update 0, then every eval_every and the end
        assert [p["update"] for p in m[k]["curve"]] == [0, 2, 4] and m[k]["curve"][0]["accuracy"] == m["sft"]["accuracy"]
        assert m[k]["curve"][-1]["accuracy"] == m[k]["accuracy"]                 # the last check is the final policy
    assert len(m["examples"]) == 3 and {"prompt", "answer", "sft", "grpo", "rloo"} <= set(m["examples"][0])

def test_demo_saves_loadable_policies(demo_dir):
    tok = AutoTokenizer.from_pretrained(demo_dir / "grpo" / "final")
    model = AutoModelForCausalLM.from_pretrained(demo_dir / "grpo" / "final")
    m = json.loads((demo_dir / "metrics.json").read_text())
    rows = make_splits(m["config"]["task"]["n_train"], m["config"]["task"]["n_eval"], 0, seed=3).held_out
    assert accuracy(model, tok, rows) == m["grpo"]["accuracy"]

def test_demo_refuses_the_sentiment_options(tmp_path):
    r = subprocess.run(["rlhf_nb", "demo", "--task", "arithmetic", "--out", str(tmp_path), "--tiny", "--model", "gpt2"],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "--model only apply to --task sentiment" in r.stderr

@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_demo_report_in_a_browser(demo_dir):
    import tempfile as _t
    prof = _t.mkdtemp()
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={prof}",
                          "--virtual-time-budget=5000", "--dump-dom", (demo_dir / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert "Verifiable rewards: two-digit addition" in dom
    assert "Addition: accuracy and KL over training" in dom                      # the figure's title, drawn by plotly.js
    assert "mean KL(π ‖ π_SFT) per sequence" in dom
