"""Gradient accumulation is one optimizer step per loop step for every trainer, and `grad_accum=G` with micro-batches of
`b` rows trains exactly like `grad_accum=1` with batches of `G·b` — on data sizes that leave a short last step and runs
that cross epochs. The real `optimizer.step` calls are counted with torch's global optimizer hook."""
import copy
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from transformers import LlamaForSequenceClassification
from rlhf_nb.models import tiny_tokenizer, tiny_llama
from rlhf_nb.train import TrainConfig
from rlhf_nb.sft import sft, SFTConfig
from rlhf_nb.reward import train_reward_model, RewardConfig
from rlhf_nb.dpo import dpo, DPOConfig
from rlhf_nb.ipo import ipo, IPOConfig
from rlhf_nb.kto import kto, KTOConfig
from rlhf_nb.ppo import ppo, PPOConfig

torch.set_num_threads(1)
FILMS = ["Moonrise", "Blue Harbor", "The Last Train", "Iron Garden", "Paper Kings", "Night Owls", "Salt Road",
         "Glass Lake", "Red Comet", "Quiet Hills", "Storm Coast"]
PAIRS = [{"prompt": f"What did you think of {f}?", "chosen": f" The {a} was great, I loved {f}.",
          "rejected": f" The {a} was dull{'.' * (i % 3)}"}
         for i, (f, a) in enumerate(zip(FILMS, ["acting", "music", "story", "ending"] * 3))]   # 11 pairs
TOK = tiny_tokenizer([p["prompt"] + p["chosen"] + p["rejected"] for p in PAIRS])


class StepCounter:
    "Counts every real optimizer step taken while it is open."
    def __enter__(self):
        self.n, self.handle = 0, register_optimizer_step_post_hook(lambda *a: setattr(self, "n", self.n + 1))
        return self
    def __exit__(self, *exc): self.handle.remove()


def cfg(tmp_path, name, bs, ga, steps, **kw):
    return TrainConfig(output_dir=str(tmp_path / name), max_steps=steps, batch_size=bs, grad_accum=ga, lr=5e-3,
                       warmup_steps=1, progress=False, save_final=False, **kw)


def run_sft(c): return sft(tiny_llama(TOK), TOK, [{"prompt": p["prompt"], "completion": p["chosen"]} for p in PAIRS], c,
                           SFTConfig(max_length=40, loss_per="token"))
def run_sft_seq(c): return sft(tiny_llama(TOK), TOK, [{"prompt": p["prompt"], "completion": p["chosen"]} for p in PAIRS], c,
                               SFTConfig(max_length=40))
def run_rm(c): return train_reward_model(tiny_llama(TOK, cls=LlamaForSequenceClassification), TOK, PAIRS, c, RewardConfig(max_length=40))
def run_dpo(c): return dpo(tiny_llama(TOK), TOK, PAIRS, c, DPOConfig(beta=0.5, max_length=40))
def run_ipo(c): return ipo(tiny_llama(TOK), TOK, PAIRS, c, IPOConfig(tau=0.5, max_length=40))
def run_kto(c): return kto(tiny_llama(TOK), TOK, PAIRS, c, KTOConfig(beta=0.5, max_length=40))

TRAINERS = {"sft_token": run_sft, "sft_sequence": run_sft_seq, "rm": run_rm, "dpo": run_dpo, "ipo": run_ipo, "kto": run_kto}


@pytest.mark.parametrize("name", list(TRAINERS))
def test_accumulation_equals_a_big_batch(tmp_path, name):
    # 11 pairs (22 rows for KTO) in steps of 6: a short last step every epoch, and 5 steps cross at least one epoch
    with StepCounter() as a: acc = TRAINERS[name](cfg(tmp_path, "acc", 2, 3, 5))
    with StepCounter() as b: big = TRAINERS[name](cfg(tmp_path, "big", 6, 1, 5))
    assert a.n == b.n == 5 and acc.sched.last_epoch == 5
    assert acc.history[-1]["epoch"] >= 1
    la, lb = [h["loss"] for h in acc.history], [h["loss"] for h in big.history]
    assert la == pytest.approx(lb, rel=1e-4, abs=1e-6)
    diff = max((p - q).abs().max().item() for p, q in zip(acc.model.parameters(), big.model.parameters()))
    assert diff < 1e-5, f"{name}: final parameters differ by {diff}"


def test_sft_step_count_small_data(tmp_path):
    # 6 rows, micro-batches of 1, grad_accum 4: steps of 4 and 2 rows; 3 loop steps are 3 optimizer steps, no more
    rows = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in PAIRS[:6]]
    with StepCounter() as n:
        t = sft(tiny_llama(TOK), TOK, rows, cfg(tmp_path, "s", 1, 4, 3), SFTConfig(max_length=40))
    assert n.n == 3 == t.step and t.sched.last_epoch == 3
    assert all(p.grad is None for p in t.model.parameters())      # no gradient computed and left unapplied


def run_ppo(tmp_path, name, ga, updates=3):
    letters = lambda prompts, completions: [sum(ch.isalpha() for ch in c) / max(len(c), 1) for c in completions]
    prompts = [{"prompt": p["prompt"]} for p in PAIRS[:8]]
    c = cfg(tmp_path, name, 4, ga, updates)
    with StepCounter() as n:
        t = ppo(tiny_llama(TOK), TOK, prompts, reward_fn=letters, config=c,
                ppo_config=PPOConfig(max_new_tokens=6, ppo_epochs=2, num_minibatches=1))
    return t, n.n


def test_ppo_accumulation(tmp_path):
    # 8 prompts, rollouts of 4: 3 updates cross an epoch; each update is ppo_epochs = 2 optimizer steps
    (acc, na), (one, n1) = run_ppo(tmp_path, "acc", 2), run_ppo(tmp_path, "one", 1)
    assert na == n1 == 6 == acc.max_steps
    assert [h["loss"] for h in acc.history] == pytest.approx([h["loss"] for h in one.history], rel=1e-4, abs=1e-6)
    diff = max((p - q).abs().max().item() for p, q in zip(acc.model.parameters(), one.model.parameters()))
    assert diff < 1e-5


@pytest.mark.parametrize("mixed", ["no", "bf16"])
def test_half_precision_policy_equals_its_reference_at_step_0(tmp_path, mixed):
    # a bf16 checkpoint: the policy is trained through fp32 master weights; its frozen reference must compute the same
    # function at step 0 (exactly with fp32 compute; to bf16 rounding of the residual stream under autocast)
    import math, warnings
    warnings.simplefilter("ignore")
    t = dpo(tiny_llama(TOK).to(torch.bfloat16), TOK, PAIRS, cfg(tmp_path, mixed, 4, 1, 1, mixed_precision=mixed), DPOConfig(beta=0.5, max_length=40))
    first = t.history[0]
    tol = 0 if mixed == "no" else 1e-3
    assert abs(first["rewards/margins"]) <= tol and abs(first["loss"] - math.log(2)) <= max(tol, 1e-6)   # log 2 in fp32
