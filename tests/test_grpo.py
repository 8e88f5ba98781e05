"""GRPO and RLOO through the shared loop: reward functions with columns and their errors, group advantages on real
rollouts, accumulation that changes nothing, a held-out KL of 0 for a policy that has not moved, and learning."""
import math
import pytest
import torch
from rlhf_nb.models import tiny_tokenizer, tiny_llama, add_lora
from rlhf_nb.train import TrainConfig
from rlhf_nb.data import tokenize_prompts, PromptCollator
from rlhf_nb.grpo import grpo, rloo, GRPOConfig, grpo_rollout, call_reward

torch.set_num_threads(1)
TOK = tiny_tokenizer()
ROWS = [{"prompt": f"The movie number {i} was", "target": "good" if i % 2 else "bad", "n": i} for i in range(24)]


def has_target(prompts, completions, target):                         # reads the dataset's `target` column
    return [float(t in c) for c, t in zip(completions, target)]


def length(prompts, completions):                                     # an old-style two-argument reward
    return [len(c) / 20 for c in completions]


def cfg(tmp_path, steps=2, **kw):
    return TrainConfig(**{"output_dir": str(tmp_path), "max_steps": steps, "batch_size": 4, "lr": 1e-3, "progress": False,
                          "save_final": False, **kw})


def test_call_reward_columns_and_errors():
    ps, cs = ["a", "b"], ["good one", "bad"]
    assert call_reward(has_target, ps, cs, {"target": ["good", "good"], "n": [1, 2]}).tolist() == [1.0, 0.0]
    assert call_reward(length, ps, cs, {"target": ["x", "y"]}).tolist() == pytest.approx([0.4, 0.15])
    seen = {}
    def everything(prompts, completions, **columns): seen.update(columns); return [0, 1]
    call_reward(everything, ps, cs, {"target": ["x", "y"], "n": [1, 2]})
    assert seen == {"target": ["x", "y"], "n": [1, 2]}
    def short(prompts, completions): return [1.0]
    def nan(prompts, completions): return [1.0, float("nan")]
    def words(prompts, completions): return ["high", "low"]
    with pytest.raises(ValueError, match="reward function short returned 1 rewards for 2 completions"): call_reward(short, ps, cs)
    with pytest.raises(ValueError, match=r"reward function nan returned nan for completion 1 \('bad'\)"): call_reward(nan, ps, cs)
    with pytest.raises(ValueError, match="reward function words must return one number per completion"): call_reward(words, ps, cs)


def test_rollout_groups_and_advantages():
    ds, _ = tokenize_prompts(ROWS[:3], TOK)
    batch = PromptCollator(TOK.pad_token_id)([ds[i] for i in range(3)])
    torch.manual_seed(0)
    c = GRPOConfig(num_generations=4, max_new_tokens=6, scale_rewards=False)
    ro = grpo_rollout(tiny_llama(TOK), batch, TOK, c, [length], [1.0])
    assert ro["input_ids"].shape[0] == 12 and "old_logps" not in ro           # on-policy: no second forward
    assert torch.equal(ro["input_ids"][:4, :batch["input_ids"].shape[1]], batch["input_ids"][0].expand(4, -1))   # a group
    A = ro["advantages"].view(3, 4)
    assert torch.allclose(A.sum(1), torch.zeros(3), atol=1e-5)                # r − group mean sums to 0 per group
    torch.manual_seed(0)
    ro2 = grpo_rollout(tiny_llama(TOK), batch, TOK, GRPOConfig(num_generations=4, max_new_tokens=6, advantage="rloo"), [length], [1.0])
    # leave-one-out: k/(k−1) × (r − group mean) (the same samples: same seed, same model init)
    assert torch.allclose(ro2["advantages"], A.flatten() * 4 / 3, atol=1e-5)


def test_logps_from_sampler_skips_the_policy_pass():
    # off-policy RLOO with a KL: old log-probs and the KL from the sampler equal a re-scoring pass, with one policy pass less
    ds, _ = tokenize_prompts(ROWS[:3], TOK)
    batch = PromptCollator(TOK.pad_token_id)([ds[i] for i in range(3)])
    policy, ref = tiny_llama(TOK, seed=0), tiny_llama(TOK, seed=1)
    calls, out = [], {}
    hook = policy.register_forward_pre_hook(lambda m, a, k: calls.append(k["input_ids"].shape[1]), with_kwargs=True)
    for sampler in (False, True):
        torch.manual_seed(0); calls.clear()
        c = GRPOConfig(num_generations=4, max_new_tokens=6, advantage="rloo", beta=0.1, ppo_epochs=2, logps_from_sampler=sampler)
        out[sampler] = ro = grpo_rollout(policy, batch, TOK, c, [length], [1.0], ref_model=ref, need_ref=True, chunk=12)
        new = ro["input_ids"].shape[1] - batch["input_ids"].shape[1]
        assert len(calls) == new + (0 if sampler else 1)                  # the sampler's steps (+ one re-scoring pass)
    hook.remove()
    a, b = out[True], out[False]
    assert torch.equal(a["input_ids"], b["input_ids"]) and "sampler_logps" not in a
    assert torch.allclose(a["old_logps"], b["old_logps"], atol=1e-5)
    assert torch.allclose(a["metrics"]["objective/kl"], b["metrics"]["objective/kl"], atol=1e-4)
    assert torch.allclose(a["advantages"], b["advantages"], atol=1e-4)
    assert a["metrics"]["objective/kl"].abs() > 0.01                       # a real KL: the reference differs


def test_config_errors():
    with pytest.raises(ValueError, match="num_generations=1: a group baseline needs at least 2"): GRPOConfig(num_generations=1)
    with pytest.raises(ValueError, match="choose 'token', 'sequence' or 'constant'"): GRPOConfig(loss_aggregation="mean")
    with pytest.raises(ValueError, match="reward_weights has 1 weights for 2 rewards"):
        grpo(tiny_llama(TOK), TOK, ROWS, [length, has_target], config=TrainConfig(progress=False), grpo_config=GRPOConfig(reward_weights=[1.0]))
    with pytest.raises(ValueError, match="pass reward_fns"): grpo(tiny_llama(TOK), TOK, ROWS)


@pytest.mark.parametrize("advantage,aggregation", [("grpo", "token"), ("grpo", "constant"), ("rloo", "sequence")])
def test_accumulation_changes_nothing(tmp_path, advantage, aggregation):
    # the same rollouts (seeded per update) in one micro-batch or two: the same losses and the same parameters
    def run(out, ga):
        torch.manual_seed(0)
        t = grpo(tiny_llama(TOK), TOK, ROWS[:8], [length], config=cfg(out, grad_accum=ga),
                 grpo_config=GRPOConfig(num_generations=4, max_new_tokens=6, beta=0.05, advantage=advantage, num_minibatches=2,
                                        loss_aggregation=aggregation))
        return t
    a, b = run(tmp_path / "a", 1), run(tmp_path / "b", 2)
    assert [h["loss"] for h in a.history] == pytest.approx([h["loss"] for h in b.history], rel=1e-4, abs=1e-6)
    assert max((p - q).abs().max().item() for p, q in zip(a.model.parameters(), b.model.parameters())) < 1e-5


def test_unmoved_policy_has_zero_heldout_kl(tmp_path):
    c = TrainConfig(output_dir=str(tmp_path), max_steps=1, batch_size=4, lr=1e-30, eval_every=1, progress=False, save_final=False)
    t = grpo(tiny_llama(TOK), TOK, ROWS[:8], [length], config=c, grpo_config=GRPOConfig(max_new_tokens=6), eval_rows=ROWS[8:12])
    ev = t.history[-1]
    assert ev["eval/objective/kl"] == pytest.approx(0.0, abs=1e-6)
    assert 0 <= ev["eval/reward"]


def test_lora_policy_uses_adapters_off_as_reference(tmp_path):
    t = rloo(add_lora(tiny_llama(TOK), r=4), TOK, ROWS[:8], [length], config=cfg(tmp_path, steps=2),
             grpo_config=GRPOConfig(max_new_tokens=6, beta=0.1))
    assert "kl" in t.history[-1] and math.isfinite(t.history[-1]["objective/kl"])
    assert (tmp_path / "run.json").exists()


def test_grpo_learns_a_checkable_reward(tmp_path):
    # reward: the completion contains the row's target word; a tiny random policy starts near 0 (0.01-0.03 over the first
    # 8 updates) and reaches 0.54-0.58 over the last 8 of 50 with seeds 0, 1, 2
    torch.manual_seed(0)
    t = grpo(tiny_llama(TOK), TOK, ROWS, has_target, config=cfg(tmp_path, steps=50, lr=3e-3, batch_size=8),
             grpo_config=GRPOConfig(num_generations=8, max_new_tokens=6, loss_aggregation="sequence"))
    r = [h["reward"] for h in t.history]
    first, last = sum(r[:8]) / 8, sum(r[-8:]) / 8
    assert last > first + 0.3, (first, last)
