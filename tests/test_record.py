"""run.json and the model card as the training loop writes them: tiny models trained for real (full and LoRA, causal LM
and reward model), the card read back by huggingface_hub, and its loading code run."""
import json, os, re, subprocess, sys
from pathlib import Path
import pytest
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, LlamaForSequenceClassification
from rlhf_nb.models import tiny_tokenizer, tiny_llama, add_lora, load_scalar_model
from rlhf_nb.train import TrainConfig
from rlhf_nb.sft import sft
from rlhf_nb.reward import train_reward_model
from rlhf_nb.dpo import DPO_LOSSES
from rlhf_nb.record import PAPERS, papers, run_record, model_card, git_state

SFT_ROWS = [{"prompt": f"Film {i} was", "completion": f" {w} and fun."} for i, w in enumerate(["good", "great", "lovely", "fine"] * 2)]
PAIRS = [{"prompt": f"Film {i} was", "chosen": f" {g}.", "rejected": f" {b}."}
         for i, (g, b) in enumerate(zip(["good", "great", "lovely", "fine"] * 2, ["bad", "dull", "weak", "awful"] * 2))]


def cfg(out, **kw): return TrainConfig(output_dir=str(out), max_steps=2, batch_size=4, progress=False, **kw)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    "A tiny causal LM and its tokenizer saved to a folder, so that a model loaded from it knows its source."
    d = tmp_path_factory.mktemp("base") / "tiny"
    tok = tiny_tokenizer(); tiny_llama(tok).save_pretrained(d); tok.save_pretrained(d)
    return d, tok


def read_card(final: Path) -> ModelCard:
    card = ModelCard.load(final / "README.md")
    assert card.text.lstrip().startswith("#")
    return card


def run_load_code(card: ModelCard, capsys) -> str:
    "Execute the card's first python block as it is; returns what it printed."
    blocks = re.findall(r"```python\n(.*?)```", card.text, re.S)
    assert blocks, "no python block in the card"
    capsys.readouterr()                                                 # only what the card's code prints
    exec(compile(blocks[0], "<model card>", "exec"), {})
    return capsys.readouterr().out


# --- run.json -------------------------------------------------------------------------------------------------------

def test_run_json_full_model(tmp_path, base, capsys):
    d, tok = base
    model = AutoModelForCausalLM.from_pretrained(d)
    trainer = sft(model, tok, SFT_ROWS, cfg(tmp_path / "run"))
    rec = json.loads((tmp_path / "run" / "run.json").read_text())
    assert rec == trainer.run_record
    assert rec["objective"] == "sft"
    assert set(rec["configs"]) == {"train", "sft"}
    assert rec["configs"]["train"]["max_steps"] == 2 and rec["configs"]["sft"]["max_length"] == 512
    m = rec["model"]
    assert (m["source"], m["class"], m["adapter"], m["dtype"]) == (str(d), "LlamaForCausalLM", False, "float32")
    n = sum(p.numel() for p in trainer.model.parameters())
    assert m["parameters"] == m["trainable"] == n
    assert rec["data"]["rows"] == len(SFT_ROWS) == rec["data"]["data_report"]["kept"]
    assert rec["data"]["fingerprint"] == trainer.dataset._fingerprint
    assert {"input_ids", "labels"} <= set(rec["data"]["columns"])
    assert rec["eval_data"] is None
    v = rec["versions"]
    import torch, transformers, peft, accelerate, datasets, rlhf_nb
    assert (v["torch"], v["transformers"], v["peft"], v["accelerate"], v["datasets"], v["rlhf_nb"]) == \
        (torch.__version__, transformers.__version__, peft.__version__, accelerate.__version__, datasets.__version__, rlhf_nb.__version__)
    assert v["python"] == "%d.%d.%d" % sys.version_info[:3] and v["cuda"] == torch.version.cuda
    assert rec["command"] == sys.argv and rec["processes"] == 1 and rec["hostname"]


def test_run_json_lora(tmp_path, base):
    d, tok = base
    model = add_lora(AutoModelForCausalLM.from_pretrained(d), r=4, dropout=0.05, target_modules=["q_proj", "v_proj"])
    trainer = sft(model, tok, SFT_ROWS, cfg(tmp_path / "run"), eval_rows=SFT_ROWS[:3])
    m = json.loads((tmp_path / "run" / "run.json").read_text())["model"]
    assert (m["source"], m["class"], m["adapter"]) == (str(d), "LlamaForCausalLM", True)
    assert {k: m["lora"][k] for k in ("r", "alpha", "dropout", "target_modules", "task_type")} == \
        {"r": 4, "alpha": 8, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"}
    lora_params = sum(p.numel() for n, p in trainer.model.named_parameters() if "lora_" in n)
    assert m["trainable"] == lora_params < m["parameters"]
    ev = trainer.run_record["eval_data"]
    assert ev["rows"] == 3 and ev["fingerprint"] == trainer.eval_dataset._fingerprint != trainer.run_record["data"]["fingerprint"]


def test_git_commit_in_a_repo_and_none_outside(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))      # git must not find a repository above tmp_path
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    repo.mkdir(); outside.mkdir()
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=repo, check=True,
                                    capture_output=True, text=True).stdout.strip()
    git("init", "-q"); (repo / "a.txt").write_text("1")
    git("add", "a.txt"); git("commit", "-qm", "first")
    monkeypatch.chdir(repo)
    rec = run_record(TrainConfig(output_dir="out"))
    assert rec["git"] == {"commit": git("rev-parse", "HEAD"), "dirty": False}
    (repo / "a.txt").write_text("2")
    assert run_record(TrainConfig())["git"]["dirty"] is True
    (repo / "new.txt").write_text("untracked files do not make the tree dirty")
    git("checkout", "a.txt")
    assert run_record(TrainConfig())["git"]["dirty"] is False
    monkeypatch.chdir(outside)
    assert run_record(TrainConfig())["git"] is None
    monkeypatch.setenv("PATH", str(tmp_path))                           # no git at all: silent as well
    assert git_state(repo) is None


# --- the model card -------------------------------------------------------------------------------------------------

def test_card_full_causal_lm(tmp_path, base, capsys):
    d, tok = base
    trainer = sft(AutoModelForCausalLM.from_pretrained(d), tok, SFT_ROWS, cfg(tmp_path / "run"), eval_rows=SFT_ROWS[:2])
    final = tmp_path / "run" / "final"
    card = read_card(final)
    assert (card.data.library_name, card.data.pipeline_tag, card.data.tags) == ("transformers", "text-generation", ["rlhf_nb", "sft", "rlhf"])
    assert card.data.base_model is None                                 # a local folder is not a hub id
    last = trainer.history[-1]
    assert f"| `loss` | {last['loss']:.4g} |" in card.text and f"| `eval/loss` | {last['eval/loss']:.4g} |" in card.text
    assert "arXiv:2203.02155" in card.text and "supervised fine-tuning" in card.text
    assert f"`{trainer.dataset._fingerprint}`" in card.text and "none: every weight trained" in card.text
    assert f"path = {str(final)!r}" in card.text
    out = run_load_code(card, capsys)
    model = AutoModelForCausalLM.from_pretrained(final)
    ids = tok("The film was", return_tensors="pt")
    want = tok.decode(model.generate(**ids, max_new_tokens=20, do_sample=False)[0, ids.input_ids.shape[1]:], skip_special_tokens=True)
    assert out == want + "\n"                                           # the card's code loaded these very weights


def test_card_lora_causal_lm(tmp_path, base, capsys):
    d, tok = base
    sft(add_lora(AutoModelForCausalLM.from_pretrained(d), r=4), tok, SFT_ROWS, cfg(tmp_path / "run"))
    final = tmp_path / "run" / "final"
    assert (final / "adapter_config.json").exists()
    card = read_card(final)
    assert (card.data.library_name, card.data.tags[-1]) == ("peft", "lora")
    assert "PeftModel.from_pretrained(base, path)" in card.text and "AutoPeftModelForCausalLM" in card.text
    assert f"base = AutoModelForCausalLM.from_pretrained({str(d)!r})" in card.text
    run_load_code(card, capsys)
    from peft import AutoPeftModelForCausalLM                           # the one-step alternative the card names
    AutoPeftModelForCausalLM.from_pretrained(final)


def test_card_reward_model_full_and_lora(tmp_path, base, capsys):
    d, tok = base
    full = train_reward_model(tiny_llama(tok, cls=LlamaForSequenceClassification), tok, PAIRS, cfg(tmp_path / "rm"))
    card = read_card(tmp_path / "rm" / "final")
    assert (card.data.library_name, card.data.pipeline_tag) == ("transformers", "text-classification")
    assert "reward-model" in card.data.tags and "arXiv:2203.02155" in card.text and "Biometrika" in card.text
    assert "AutoModelForSequenceClassification.from_pretrained(path)" in card.text
    printed = run_load_code(card, capsys)
    import torch
    text = "Is the film good?" + " Yes, it is wonderful." + tok.eos_token
    with torch.no_grad(): want = full.acc.unwrap_model(full.model).eval()(**tok(text, return_tensors="pt")).logits[0, 0]
    assert printed == f"reward: {want.item():.3f}\n"

    lora = add_lora(load_scalar_model(str(d)), r=4, task_type="SEQ_CLS")
    train_reward_model(lora, tok, PAIRS, cfg(tmp_path / "rm-lora"))
    card = read_card(tmp_path / "rm-lora" / "final")
    assert (card.data.library_name, card.data.pipeline_tag) == ("peft", "text-classification")
    assert f"AutoModelForSequenceClassification.from_pretrained({str(d)!r}, num_labels=1)" in card.text
    run_load_code(card, capsys)


def test_card_hub_ids_in_metadata():
    rec = {"objective": "dpo", "configs": {"train": {"output_dir": "runs/x"}, "dpo": {"loss": "hinge", "beta": 0.1}},
           "model": {"source": "Qwen/Qwen2.5-0.5B-Instruct"}, "data": {"rows": 10, "source": "trl-lib/ultrafeedback_binarized"},
           "eval_data": {"rows": 2, "source": "data/held_out.jsonl"}}
    card = ModelCard(model_card(rec, adapter=True))
    assert card.data.base_model == "Qwen/Qwen2.5-0.5B-Instruct"
    assert card.data.datasets == ["trl-lib/ultrafeedback_binarized"]            # a local file is not listed
    assert "path = 'runs/x/final'" in card.text and "arXiv:2305.10425" in card.text   # hinge = SLiC-HF


OBJECTIVES = ["sft", "rm", "ppo", "dpo", "ipo", "kto", "grpo", "rloo", "simpo", "orpo"]

@pytest.mark.parametrize("objective", OBJECTIVES)
def test_papers_for_every_objective(objective):
    ps = papers(objective)
    assert ps, f"no paper for {objective}"
    text = ModelCard(model_card({"objective": objective})).text
    for p in ps:
        assert re.fullmatch(r"\d{4}\.\d{4,5}", p.arxiv or "") or p.venue
        assert (f"arXiv:{p.arxiv}" if p.arxiv else p.venue) in text and p.title in text


def test_papers_for_every_dpo_loss():
    for loss in DPO_LOSSES:
        assert papers("dpo", loss)[0].arxiv == "2305.18290"
    assert [p.arxiv for p in papers("dpo", "robust")] == ["2305.18290", "2403.00409"]
    assert [p.arxiv for p in papers("dpo", "hinge")] == ["2305.18290", "2305.10425"]
    assert set(OBJECTIVES) <= set(PAPERS)


def test_dpo_card_names_its_loss_variant(tmp_path, base):
    from rlhf_nb.dpo import dpo, DPOConfig
    d, tok = base
    dpo(AutoModelForCausalLM.from_pretrained(d), tok, PAIRS, cfg(tmp_path / "run"), DPOConfig(loss="hinge", beta=0.2))
    rec = json.loads((tmp_path / "run" / "run.json").read_text())
    assert rec["objective"] == "dpo" and (rec["configs"]["dpo"]["loss"], rec["configs"]["dpo"]["beta"]) == ("hinge", 0.2)
    card = read_card(tmp_path / "run" / "final")
    assert "dpo" in card.data.tags and "| `loss` | hinge |" in card.text and "| `beta` | 0.2 |" in card.text
    assert "arXiv:2305.18290" in card.text and "arXiv:2305.10425" in card.text and "arXiv:2403.00409" not in card.text
    assert "| `rewards/accuracies` |" in card.text                      # the objective's own metrics are in the results


def test_ppo_policy_and_critic_summary(base):
    from rlhf_nb.ppo import PolicyAndValue
    d, _ = base
    pair = PolicyAndValue(add_lora(AutoModelForCausalLM.from_pretrained(d), r=2), "shared")
    s = run_record(TrainConfig(), objective="ppo", model=pair)["model"]
    assert (s["source"], s["class"], s["wrapper"], s["adapter"], s["lora"]["r"]) == (str(d), "LlamaForCausalLM", "PolicyAndValue", True, 2)
    assert s["parameters"] == sum(p.numel() for p in pair.parameters())                 # the critic's head counted too
    assert s["trainable"] == sum(p.numel() for n, p in pair.named_parameters() if "lora_" in n or n.startswith("value_head"))
