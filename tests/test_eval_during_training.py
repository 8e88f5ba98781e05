"""Held-out evaluation inside the loop, for every objective: `eval_rows` are evaluated every `eval_every` steps and at
the end, under eval/ names in metrics.jsonl, and the numbers are the objective's own held-out metrics computed
independently on the final model."""
import copy, json
import pytest
import torch
from transformers import LlamaForSequenceClassification
from rlhf_nb.models import tiny_tokenizer, tiny_llama
from rlhf_nb.train import TrainConfig, evaluate
from rlhf_nb.data import tokenize_sft, SFTCollator, tokenize_preferences
from rlhf_nb.sft import sft, sft_batch, SFTConfig
from rlhf_nb.reward import train_reward_model, evaluate_reward_model, RewardConfig
from rlhf_nb.dpo import dpo, DPOConfig, evaluate_preferences, precompute_reference_logps, dpo_loss
from rlhf_nb.ipo import ipo, IPOConfig
from rlhf_nb.kto import kto, KTOConfig
from rlhf_nb.ppo import ppo, PPOConfig

torch.set_num_threads(1)
FILMS = ["Moonrise", "Blue Harbor", "The Last Train", "Iron Garden", "Paper Kings", "Night Owls", "Salt Road",
         "Glass Lake", "Red Comet", "Quiet Hills", "Storm Coast", "Old Mill", "Green Door"]
PAIRS = [{"prompt": f"What did you think of {f}?", "chosen": f" The {a} was great, I loved {f}.",
          "rejected": f" The {a} was dull."} for f, a in zip(FILMS, ["acting", "music", "story", "ending"] * 4)]
TRAIN, HELD_OUT = PAIRS[:9], PAIRS[9:]                                  # 9 pairs to train on, 4 held out
TOK = tiny_tokenizer([p["prompt"] + p["chosen"] + p["rejected"] for p in PAIRS])


def cfg(tmp_path, steps=4, **kw):
    return TrainConfig(output_dir=str(tmp_path), max_steps=steps, batch_size=4, lr=5e-3, eval_every=2, progress=False,
                       save_final=False, **kw)


def eval_rows(tmp_path):
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if any(k.startswith("eval/") for k in r)]


def test_sft(tmp_path):
    sft_rows = lambda pairs: [{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs]
    t = sft(tiny_llama(TOK), TOK, sft_rows(TRAIN), cfg(tmp_path), SFTConfig(max_length=40), eval_rows=sft_rows(HELD_OUT))
    ev = eval_rows(tmp_path)
    assert [r["step"] for r in ev] == [2, 4] and "loss" in ev[0]            # merged into the training rows
    ds, _ = tokenize_sft(sft_rows(HELD_OUT), TOK, max_length=40)
    want = evaluate(t.model, sft_batch, ds, SFTCollator(TOK.pad_token_id))
    assert ev[-1]["eval/loss"] == pytest.approx(want["loss"], rel=1e-5)
    assert ev[-1]["eval/loss"] < ev[0]["eval/loss"]


def test_reward_model(tmp_path):
    t = train_reward_model(tiny_llama(TOK, cls=LlamaForSequenceClassification), TOK, TRAIN, cfg(tmp_path),
                           RewardConfig(max_length=40), eval_rows=HELD_OUT)
    ev = eval_rows(tmp_path)
    want = evaluate_reward_model(t.model, TOK, HELD_OUT, max_length=40)
    assert [r["step"] for r in ev] == [2, 4]
    for k in ("loss", "accuracy"):
        assert ev[-1][f"eval/{k}"] == pytest.approx(want[k], rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("precompute", [False, True])
def test_dpo(tmp_path, precompute):
    start = tiny_llama(TOK)
    t = dpo(copy.deepcopy(start), TOK, TRAIN, cfg(tmp_path), DPOConfig(beta=0.5, max_length=40, precompute_ref=precompute),
            eval_rows=HELD_OUT)
    ev = eval_rows(tmp_path)
    assert [r["step"] for r in ev] == [2, 4]
    # the held-out pairs' reference is the untrained policy, scored independently here
    ds, _ = tokenize_preferences(HELD_OUT, TOK, max_length=40)
    ds = precompute_reference_logps(start, ds, TOK.pad_token_id)
    want = evaluate_preferences(t.model, ds, TOK.pad_token_id, loss_fn=dpo_loss, beta=0.5)
    for k in ("loss", "rewards/accuracies", "rewards/margins"):
        assert ev[-1][f"eval/{k}"] == pytest.approx(want[k], rel=1e-4, abs=1e-6)


def test_ipo_and_kto(tmp_path):
    ipo(tiny_llama(TOK), TOK, TRAIN, cfg(tmp_path / "ipo"), IPOConfig(tau=0.5, max_length=40), eval_rows=HELD_OUT)
    kto(tiny_llama(TOK), TOK, TRAIN, cfg(tmp_path / "kto"), KTOConfig(beta=0.5, max_length=40, precompute_ref=True),
        eval_rows=HELD_OUT)
    for name, keys in (("ipo", ("eval/loss", "eval/rewards/margins")), ("kto", ("eval/loss", "eval/kl"))):
        ev = eval_rows(tmp_path / name)
        assert [r["step"] for r in ev] == [2, 4], name
        for k in keys: assert all(k in r and r[k] == r[k] for r in ev), (name, k)   # present and not NaN
        assert ev[0]["eval/loss"] != ev[1]["eval/loss"], name                   # measured on the model of each step


def test_ppo(tmp_path):
    prompts = [{"prompt": p["prompt"]} for p in PAIRS]
    reward = lambda ps, cs: [len(c) / 10 for c in cs]                       # varies between samples: a gradient
    t = ppo(tiny_llama(TOK), TOK, prompts[:8], reward_fn=reward,
            config=TrainConfig(output_dir=str(tmp_path), max_steps=2, batch_size=4, lr=1e-3, eval_every=1, progress=False,
                               save_final=False),
            ppo_config=PPOConfig(max_new_tokens=6, ppo_epochs=2), eval_rows=prompts[8:])
    ev = eval_rows(tmp_path)
    # eval_every counts PPO updates, as max_steps does: one evaluation per update (2 optimizer steps each)
    assert [r["step"] for r in ev] == [2, 4]
    for k in ("eval/objective/scores", "eval/objective/kl", "eval/objective/kl_std", "eval/val/eos_fraction"):
        assert k in ev[-1]
    assert ev[0]["eval/objective/kl"] != 0.0                                  # the policy moved from the reference
    assert ev[-1]["eval/objective/kl_std"] >= 0
