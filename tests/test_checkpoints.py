"""Every objective's checkpoints open as models: `from_pretrained` for full fine-tuning, `PeftModel.from_pretrained` for
LoRA — and a LoRA checkpoint holds the adapters (and a reward model's new head), never the frozen base weights."""
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaForSequenceClassification
from peft import PeftModel
from rlhf_nb.models import tiny_tokenizer, tiny_llama, add_lora
from rlhf_nb.train import TrainConfig
from rlhf_nb.sft import sft, SFTConfig
from rlhf_nb.reward import train_reward_model, RewardConfig
from rlhf_nb.dpo import dpo, DPOConfig
from rlhf_nb.ipo import ipo, IPOConfig
from rlhf_nb.kto import kto, KTOConfig
from rlhf_nb.ppo import ppo, PPOConfig

torch.set_num_threads(1)
FILMS = ["Moonrise", "Blue Harbor", "The Last Train", "Iron Garden", "Paper Kings", "Night Owls", "Salt Road", "Glass Lake"]
PAIRS = [{"prompt": f"What did you think of {f}?", "chosen": f" The {a} was great.", "rejected": f" The {a} was dull."}
         for f, a in zip(FILMS, ["acting", "music", "story", "ending"] * 2)]
TOK = tiny_tokenizer([p["prompt"] + p["chosen"] + p["rejected"] for p in PAIRS])
SCALAR = object()                                                       # marks the reward model's run


def run(name, model, out):
    c = TrainConfig(output_dir=str(out), max_steps=2, batch_size=4, lr=1e-3, save_every=2, progress=False, save_final=False)
    if name == "sft": return sft(model, TOK, [{"prompt": p["prompt"], "completion": p["chosen"]} for p in PAIRS], c, SFTConfig(max_length=32))
    if name == "rm": return train_reward_model(model, TOK, PAIRS, c, RewardConfig(max_length=32))
    if name == "dpo": return dpo(model, TOK, PAIRS, c, DPOConfig(max_length=32))
    if name == "ipo": return ipo(model, TOK, PAIRS, c, IPOConfig(max_length=32))
    if name == "kto": return kto(model, TOK, PAIRS, c, KTOConfig(max_length=32))
    return ppo(model, TOK, [{"prompt": p["prompt"]} for p in PAIRS], reward_fn=lambda ps, cs: [len(c) / 10 for c in cs],
               config=c, ppo_config=PPOConfig(max_new_tokens=4, ppo_epochs=1), value_model="shared")


@pytest.mark.parametrize("name", ["sft", "rm", "dpo", "ipo", "kto", "ppo"])
@pytest.mark.parametrize("lora", [False, True])
def test_checkpoint_opens_as_a_model(tmp_path, name, lora):
    cls = LlamaForSequenceClassification if name == "rm" else None
    torch.manual_seed(0)
    base = tiny_llama(TOK, cls=cls) if cls else tiny_llama(TOK)
    base.save_pretrained(tmp_path / "base")
    auto = AutoModelForSequenceClassification if name == "rm" else AutoModelForCausalLM
    model = auto.from_pretrained(tmp_path / "base")
    if lora: model = add_lora(model, r=4, task_type="SEQ_CLS" if name == "rm" else "CAUSAL_LM")
    t = run(name, model, tmp_path / "run")
    steps = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()]
    ck = tmp_path / "run" / "checkpoints" / sorted(steps)[-1]
    trained = t.acc.unwrap_model(t.model)
    trained = getattr(trained, "policy", trained).eval()                 # PPO: the policy (its critic is in value_model/)
    ids = torch.tensor([TOK(PAIRS[0]["prompt"])["input_ids"]])
    out = lambda m: (m(input_ids=ids).logits).detach()
    if lora:
        opened = PeftModel.from_pretrained(auto.from_pretrained(tmp_path / "base"), ck).eval()
        weights = {k for f in ck.glob("*.safetensors") for k in load_file(f)} | {k for k in load_file(ck / "resume" / "model.safetensors")}
        head = "score" if name == "rm" else "value_head"
        assert weights and all("lora_" in k or head in k for k in weights), sorted(weights)[:8]
    else:
        opened = auto.from_pretrained(ck).eval()
        resume = load_file(ck / "resume" / "model.safetensors")                # the weights are stored once
        assert (resume == {}) if name != "ppo" else set(resume) == {"value_head.weight", "value_head.bias"}
    assert torch.allclose(out(opened), out(trained), atol=1e-5)
    if name == "ppo": assert (ck / "value_model" / "value_head.pt").exists()
