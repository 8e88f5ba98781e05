"The `rlhf_nb` command as a user runs it: a real process, a .jsonl file, a saved tiny model."
import json, os, subprocess, sys
from pathlib import Path
import pytest
from rlhf_nb.models import tiny_tokenizer, tiny_llama

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}

def rlhf_nb(*args, check=True):
    return subprocess.run(["rlhf_nb", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=600, check=check)

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    tok = tiny_tokenizer(); tiny_llama(tok).save_pretrained(d / "tiny"); tok.save_pretrained(d / "tiny")
    good, bad = ["good", "great", "fun"], ["bad", "dull", "weak"]
    rows = [{"prompt": f"Film {i} was", "completion": f" {good[i % 3]}.", "chosen": f" {good[i % 3]}.", "rejected": f" {bad[i % 3]}."}
            for i in range(24)]
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "broken.jsonl").write_text(json.dumps({"prompt": "x", "chosen": " a."}) + "\n")
    return d

def test_help_lists_commands():
    out = rlhf_nb("--help").stdout
    for c in ("sft", "rm"): assert c in out
    assert "--max-steps" in rlhf_nb("sft", "--help").stdout

def test_sft_then_rm(files):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    r = rlhf_nb("sft", "--model", files / "tiny", "--dataset", files / "data.jsonl", "--output-dir", files / "sft",
                "--max-steps", 4, "--batch-size", 4, "--lr", 1e-3, "--max-length", 32, "--quiet")
    lines = [json.loads(l) for l in (files / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2, 3, 4]
    assert {"loss", "lr", "step_time_s"} <= set(lines[0])
    AutoModelForCausalLM.from_pretrained(files / "sft" / "final")
    r = rlhf_nb("rm", "--model", files / "sft" / "final", "--dataset", files / "data.jsonl", "--output-dir", files / "rm",
                "--max-steps", 4, "--batch-size", 4, "--lr", 1e-3, "--max-length", 32, "--quiet",
                "--eval-dataset", files / "data.jsonl")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert 0 <= summary["eval/accuracy"] <= 1
    assert "accuracy" in json.loads((files / "rm" / "metrics.jsonl").read_text().splitlines()[0])
    AutoModelForSequenceClassification.from_pretrained(files / "rm" / "final")

def test_lora_sft_writes_an_adapter_folder(files):
    rlhf_nb("sft", "--model", files / "tiny", "--dataset", files / "data.jsonl", "--output-dir", files / "lora",
            "--max-steps", 2, "--batch-size", 4, "--lora-r", 4, "--max-length", 32, "--quiet")
    assert (files / "lora" / "final" / "adapter_config.json").exists()

def test_bad_input_is_one_clear_line(files):
    r = rlhf_nb("rm", "--model", files / "tiny", "--dataset", files / "broken.jsonl", "--output-dir", files / "x",
                "--max-steps", 1, "--quiet", check=False)
    assert r.returncode == 1
    assert "rejected" in r.stderr and "Traceback" not in r.stderr
    r = rlhf_nb("sft", "--model", files / "tiny", "--dataset", files / "nope.jsonl", "--output-dir", files / "x", check=False)
    assert r.returncode == 1 and "nope.jsonl" in r.stderr

@pytest.mark.parametrize("cmd,extra", [("dpo", ["--beta", "0.5"]), ("dpo", ["--loss", "robust", "--label-smoothing", "0.1", "--precompute-ref"]),
                                       ("ipo", ["--tau", "0.5", "--average-logps"]), ("kto", [])])
def test_preference_commands(files, cmd, extra):
    out = files / f"{cmd}{len(extra)}"
    r = rlhf_nb(cmd, "--model", files / "tiny", "--dataset", files / "data.jsonl", "--output-dir", out, "--max-steps", 3,
                "--batch-size", 4, "--lr", 1e-3, "--max-length", 32, "--quiet", *extra,
                *(["--eval-dataset", files / "data.jsonl"] if cmd != "kto" else []))
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    names = {"rewards/chosen", "rewards/rejected", "rewards/margins"} | ({"rewards/accuracies", "logps/chosen", "logps/rejected"} if cmd != "kto" else set())
    assert names <= set(first), set(first)
    if cmd != "kto": assert "eval/rewards/accuracies" in json.loads(r.stdout.strip().splitlines()[-1])
    assert (out / "final" / "config.json").exists()

def test_preference_bad_input(files):
    (files / "same.jsonl").write_text(json.dumps({"prompt": "x", "chosen": " a.", "rejected": " a."}) + "\n")
    r = rlhf_nb("dpo", "--model", files / "tiny", "--dataset", files / "same.jsonl", "--output-dir", files / "y", check=False)
    assert r.returncode == 1 and "identical" in r.stderr
    (files / "one_label.jsonl").write_text("".join(json.dumps({"prompt": "x", "completion": f" {w}.", "label": True}) + "\n" for w in "abcd"))
    r = rlhf_nb("kto", "--model", files / "tiny", "--dataset", files / "one_label.jsonl", "--output-dir", files / "z", check=False)
    assert r.returncode == 1 and "desirable" in r.stderr

def test_ppo_with_a_reward_function_file(files):
    (files / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"Film {i} was"}) + "\n" for i in range(8)))
    (files / "rewards.py").write_text("def short(prompts, completions):\n    return [-len(c) / 10 for c in completions]\n")
    out = files / "ppo"
    r = rlhf_nb("ppo", "--model", files / "tiny", "--dataset", files / "prompts.jsonl", "--output-dir", out,
                "--reward-fn", f"{files / 'rewards.py'}:short", "--max-steps", 2, "--batch-size", 4, "--ppo-epochs", 2,
                "--max-new-tokens", 8, "--kl-target", 2.0, "--quiet")
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"objective/kl", "objective/scores", "objective/entropy", "policy/approxkl_avg", "policy/clipfrac_avg",
            "loss/policy_avg", "loss/value_avg", "val/num_eos_tokens"} <= set(rows[0])
    assert rows[0]["policy/clipfrac_avg"] == 0.0                  # first minibatch: ratio exactly 1
    assert (out / "final" / "config.json").exists() and (out / "final" / "value_model").exists()
    r = rlhf_nb("ppo", "--model", files / "tiny", "--dataset", files / "prompts.jsonl", "--output-dir", out, check=False)
    assert r.returncode == 1 and "--reward-model" in r.stderr

def test_resume_without_a_checkpoint_starts_fresh(files):
    # a new folder: no crash at the first log; a folder with an old run's metrics but no checkpoint: a fresh metrics file
    args = ["sft", "--model", files / "tiny", "--dataset", files / "data.jsonl", "--max-steps", 2, "--batch-size", 4,
            "--max-length", 32, "--quiet", "--resume"]
    r = rlhf_nb(*args, "--output-dir", files / "new" / "run")
    assert "starting a fresh run" in r.stdout
    assert len((files / "new" / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    stale = files / "stale"; stale.mkdir()
    (stale / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 9.0}) + "\n")
    rlhf_nb(*args, "--output-dir", stale)
    assert [json.loads(l)["step"] for l in (stale / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert 9.0 not in [json.loads(l)["loss"] for l in (stale / "metrics.jsonl").read_text().splitlines()]

def test_columns_splits_and_a_chat_template_file(files, tmp_path):
    import datasets
    from transformers import AutoTokenizer
    from rlhf_nb.models import TINY_CHAT_TEMPLATE
    rows = [{"question": f"Film {i} was", "good": " good.", "bad": " bad."} for i in range(12)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:8]), "test": datasets.Dataset.from_list(rows[8:])}).save_to_disk(tmp_path / "dd")
    r = rlhf_nb("dpo", "--model", files / "tiny", "--dataset", tmp_path / "dd", "--prompt-key", "question", "--chosen-key", "good",
                "--rejected-key", "bad", "--eval-split", "test", "--num-proc", 2, "--output-dir", tmp_path / "dpo", "--max-steps", 2,
                "--batch-size", 4, "--max-length", 32, "--quiet")
    assert json.loads((tmp_path / "dpo" / "eval.json").read_text())["eval/rewards/accuracies"] >= 0
    bare = AutoTokenizer.from_pretrained(files / "tiny"); bare.chat_template = None; bare.save_pretrained(tmp_path / "bare")
    for f in ("config.json", "model.safetensors"): (tmp_path / "bare" / f).write_bytes((files / "tiny" / f).read_bytes())
    msgs = [{"messages": [{"role": "user", "content": f"Film {i}?"}, {"role": "assistant", "content": "Good."}]} for i in range(4)]
    (tmp_path / "msgs.jsonl").write_text("".join(json.dumps(m) + "\n" for m in msgs))
    args = ["sft", "--model", tmp_path / "bare", "--dataset", tmp_path / "msgs.jsonl", "--output-dir", tmp_path / "sft",
            "--max-steps", 1, "--batch-size", 2, "--max-length", 32, "--quiet"]
    assert "no chat template" in rlhf_nb(*args, check=False).stderr
    (tmp_path / "t.jinja").write_text(TINY_CHAT_TEMPLATE)
    rlhf_nb(*args, "--chat-template", tmp_path / "t.jinja")
    assert AutoTokenizer.from_pretrained(tmp_path / "sft" / "final").chat_template == TINY_CHAT_TEMPLATE

def test_chat_template_kwargs_reach_the_template(files, tmp_path):
    from rlhf_nb.models import TINY_CHAT_TEMPLATE
    (tmp_path / "strict.jinja").write_text("{% if not house_style %}{{ raise_exception('house_style missing') }}{% endif %}" + TINY_CHAT_TEMPLATE)
    msgs = [{"messages": [{"role": "user", "content": f"Film {i}?"}, {"role": "assistant", "content": "Good."}]} for i in range(4)]
    (tmp_path / "msgs.jsonl").write_text("".join(json.dumps(m) + "\n" for m in msgs))
    args = ["sft", "--model", files / "tiny", "--dataset", tmp_path / "msgs.jsonl", "--chat-template", tmp_path / "strict.jinja",
            "--max-steps", 1, "--batch-size", 2, "--max-length", 32, "--quiet"]
    assert "house_style missing" in rlhf_nb(*args, "--output-dir", tmp_path / "a", check=False).stderr
    rlhf_nb(*args, "--output-dir", tmp_path / "b", "--chat-template-kwargs", '{"house_style": true}')
    assert (tmp_path / "b" / "final").exists()
