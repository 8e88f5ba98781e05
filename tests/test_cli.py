"The `rlhf_nb` command as a user runs it: a real process, a .jsonl file, a saved tiny model, a YAML config file."
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

def config(path: Path, **settings) -> Path:
    "A YAML config file holding `settings` (paths as strings)."
    import yaml
    path.write_text(yaml.safe_dump({k: str(v) if isinstance(v, Path) else v for k, v in settings.items()}))
    return path

def steps(out: Path) -> list[int]:
    return [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]

TINY = dict(batch_size=4, max_length=32, progress=False)             # the settings every run here shares

def test_help_lists_commands():
    out = rlhf_nb("--help").stdout
    for c in ("sft", "rm", "simpo", "orpo"): assert c in out
    h = rlhf_nb("sft", "--help").stdout
    for flag in ("--max-steps", "--config FILE", "--print-config", "peak learning rate (default: 2e-05)", "--loss-per"): assert flag in h

def test_sft_then_rm(files):
    # each from a config file, with a flag overriding one of its values
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from rlhf_nb.cli import command_configs
    sft = config(files / "sft.yaml", model=files / "tiny", dataset=files / "data.jsonl", output_dir=files / "sft", max_steps=6, lr=1e-3, **TINY)
    r = rlhf_nb("sft", "--config", sft, "--max-steps", 4)
    lines = [json.loads(l) for l in (files / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2, 3, 4]                  # the flag's 4, not the file's 6
    assert {"loss", "lr", "step_time_s"} <= set(lines[0])
    assert lines[0]["lr"] <= 1e-3 and lines[0]["lr"] > 2e-5            # the file's lr, not the command's default
    AutoModelForCausalLM.from_pretrained(files / "sft" / "final")
    # the run's config.yaml holds every setting it used: passed back, the same configs
    assert command_configs(["sft", "--config", files / "sft" / "config.yaml"]) == command_configs(["sft", "--config", sft, "--max-steps", "4"])
    rm = config(files / "rm.yaml", model=files / "sft" / "final", dataset=files / "data.jsonl", output_dir=files / "rm", max_steps=6,
                lr=1e-3, eval_dataset=files / "data.jsonl", **TINY)
    r = rlhf_nb("rm", "--config", rm, "--max-steps", 3)
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 3 and steps(files / "rm") == [1, 2, 3]
    assert 0 <= summary["eval/accuracy"] <= 1
    assert json.loads((files / "rm" / "eval.json").read_text())["eval/accuracy"] == summary["eval/accuracy"]
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

@pytest.mark.parametrize("settings,message", [({"bta": 0.5}, "bad.yaml: unknown key 'bta' (did you mean 'beta'?)"),
                                              ({"max_steps": 1.5}, "bad.yaml: max_steps: expected an integer or null, got 1.5"),
                                              ({"lr": -1}, "TrainConfig.lr must be > 0, got -1.0 (set by ")])
def test_a_bad_config_file_is_one_clear_line(files, monkeypatch, capsys, settings, message):
    # the console script's own function, in this process: the check runs before any model is loaded, so no process is needed
    from rlhf_nb.cli import entry
    bad = config(files / "bad.yaml", model=files / "tiny", dataset=files / "data.jsonl", output_dir=files / "never", **settings)
    monkeypatch.setattr(sys, "argv", ["rlhf_nb", "dpo", "--config", str(bad)])
    with pytest.raises(SystemExit) as e: entry()
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rlhf_nb: error: ") and message in err[0] and "bad.yaml" in err[0], err
    assert not (files / "never").exists()                              # refused before anything was loaded or written

@pytest.mark.parametrize("cmd,extra", [("dpo", ["--beta", "0.5"]), ("dpo", ["--loss", "robust", "--label-smoothing", "0.1", "--precompute-ref"]),
                                       ("ipo", ["--tau", "0.5", "--average-logps"]), ("kto", []),
                                       ("simpo", ["--beta", "2.5", "--gamma", "0.5"]), ("orpo", ["--lam", "0.2"])])
def test_preference_commands(files, cmd, extra):
    # the settings in a config file, the step count overridden by a flag, the objective's knobs as flags
    out = files / f"{cmd}{len(extra)}"
    cfg = config(files / f"{cmd}{len(extra)}.yaml", model=files / "tiny", dataset=files / "data.jsonl", output_dir=out, max_steps=5,
                 lr=1e-3, eval_dataset=files / "data.jsonl", **TINY)
    r = rlhf_nb(cmd, "--config", cfg, "--max-steps", 3, *extra)
    assert steps(out) == [1, 2, 3]
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    names = {"rewards/chosen", "rewards/rejected", "rewards/margins"} | ({"rewards/accuracies", "logps/chosen", "logps/rejected"} if cmd != "kto" else set())
    if cmd == "orpo": names |= {"nll_loss", "log_odds_ratio", "log_odds_chosen"}   # ORPO's own, under TRL's names
    assert names <= set(first), set(first)
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert {f"eval/{k}" for k in names} <= set(summary), summary      # the held-out rows, evaluated by the loop (kto too)
    assert (out / "final" / "config.json").exists()
    saved = (out / "config.yaml").read_text()
    assert "max_steps: 3" in saved and "lr: 0.001" in saved
    for flag, key in (("--beta", "beta"), ("--tau", "tau"), ("--loss", "loss"), ("--gamma", "gamma"), ("--lam", "lam")):
        if flag in extra: assert f"{key}: {extra[extra.index(flag) + 1]}" in saved

def test_preference_bad_input(files):
    (files / "same.jsonl").write_text(json.dumps({"prompt": "x", "chosen": " a.", "rejected": " a."}) + "\n")
    r = rlhf_nb("dpo", "--model", files / "tiny", "--dataset", files / "same.jsonl", "--output-dir", files / "y", check=False)
    assert r.returncode == 1 and "identical" in r.stderr
    (files / "one_label.jsonl").write_text("".join(json.dumps({"prompt": "x", "completion": f" {w}.", "label": True}) + "\n" for w in "abcd"))
    r = rlhf_nb("kto", "--model", files / "tiny", "--dataset", files / "one_label.jsonl", "--output-dir", files / "z", check=False)
    assert r.returncode == 1 and "desirable" in r.stderr

def test_reference_free_commands_refuse_a_reference_model(files):
    for cmd in ("simpo", "orpo"):
        r = rlhf_nb(cmd, "--model", files / "tiny", "--dataset", files / "data.jsonl", "--output-dir", files / f"{cmd}_ref",
                    "--ref-model", files / "tiny", "--max-steps", 1, "--quiet", check=False)
        assert r.returncode == 1 and "reference-free" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not (files / f"{cmd}_ref" / "metrics.jsonl").exists()

def test_ppo_with_a_reward_function_file(files):
    (files / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"Film {i} was"}) + "\n" for i in range(8)))
    (files / "rewards.py").write_text("def short(prompts, completions):\n    return [-len(c) / 10 for c in completions]\n")
    out = files / "ppo"
    cfg = config(files / "ppo.yaml", model=files / "tiny", dataset=files / "prompts.jsonl", output_dir=out, reward_fn=f"{files / 'rewards.py'}:short",
                 max_steps=5, batch_size=4, ppo_epochs=2, max_new_tokens=8, kl_target=2.0, eval_dataset=files / "prompts.jsonl")
    r = rlhf_nb("ppo", "--config", cfg, "--max-steps", 2, "--quiet")
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]              # the flag's 2 updates × 2 epochs, not the file's 5
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"eval/objective/scores", "eval/objective/kl"} <= set(summary), summary
    assert {"objective/kl", "objective/scores", "objective/entropy", "policy/approxkl_avg", "policy/clipfrac_avg",
            "loss/policy_avg", "loss/value_avg", "val/num_eos_tokens"} <= set(rows[0])
    assert rows[0]["policy/clipfrac_avg"] == 0.0                  # first minibatch: ratio exactly 1
    assert (out / "final" / "config.json").exists() and (out / "final" / "value_model").exists()
    r = rlhf_nb("ppo", "--model", files / "tiny", "--dataset", files / "prompts.jsonl", "--output-dir", out, check=False)
    assert r.returncode == 1 and "--reward-model" in r.stderr

def test_grpo_and_rloo_with_reward_functions_that_read_columns(files):
    rows = [{"prompt": f"Film {i} was", "target": "good" if i % 2 else "bad"} for i in range(8)]
    (files / "targets.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    checks = files / "checks.py"
    checks.write_text("def has_target(prompts, completions, target):\n    return [float(t in c) for c, t in zip(completions, target)]\n"
                      "def short(prompts, completions):\n    return [-len(c) / 10 for c in completions]\n")
    for cmd in ("grpo", "rloo"):
        out = files / cmd
        cfg = config(files / f"{cmd}.yaml", model=files / "tiny", dataset=files / "targets.jsonl", output_dir=out, max_steps=5,
                     batch_size=4, num_generations=4, max_new_tokens=6, lr=1e-3, beta=0.1, eval_dataset=files / "targets.jsonl",
                     reward_fn=[f"{checks}:has_target", f"{checks}:short"], reward_weights=[1.0, 0.5])
        r = rlhf_nb(cmd, "--config", cfg, "--max-steps", 2, "--quiet")
        hist = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
        assert [h["step"] for h in hist] == [1, 2]                      # the flag's 2 updates, not the file's 5
        assert {"reward", "reward_std", "frac_reward_zero_std", "rewards/has_target/mean", "rewards/short/mean", "kl",
                "completions/mean_length", "completions/clipped_ratio", "clip_ratio/low_mean"} <= set(hist[0]), (cmd, sorted(hist[0]))
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        assert {"eval/reward", "eval/objective/kl"} <= set(summary), summary
        assert json.loads((out / "run.json").read_text())["objective"] == cmd
        assert (out / "final" / "README.md").exists()
    r = rlhf_nb("grpo", "--model", files / "tiny", "--dataset", files / "targets.jsonl", "--output-dir", files / "g2", check=False)
    assert r.returncode == 1 and "--reward-fn" in r.stderr

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

COMMANDS = ("sft", "rm", "dpo", "ipo", "kto", "simpo", "orpo", "ppo", "grpo", "rloo")

@pytest.mark.parametrize("cmd", COMMANDS)
def test_print_config_round_trip(tmp_path, cmd, capsys):
    "--print-config's YAML, passed back with --config, gives the same configs; flags given with it still override it."
    from rlhf_nb.cli import main, command_configs
    argv = [cmd, "--model", "m", "--dataset", "d.jsonl", "--output-dir", tmp_path / "out", "--eval-split", "test", "--lora-r", "8",
            "--lora-target-modules", "q_proj", "v_proj", "--bf16", "--resume", "--max-grad-norm", "none", "--seed", "3",
            *(["--reward-fn", "rlhf_nb.sentiment:sentiment_reward", "--kl-target", "2"] if cmd == "ppo" else []),
            *(["--loss", "hinge", "--loss-kwargs", '{"x": 1}'] if cmd == "dpo" else []),
            *(["--gamma", "0.7"] if cmd == "simpo" else []), *(["--lam", "0.25"] if cmd == "orpo" else []),
            *(["--reward-fn", "rlhf_nb.sentiment:sentiment_reward", "--reward-fn", "m:f", "--num-generations", "4"] if cmd in ("grpo", "rloo") else [])]
    configs = main([*argv, "--print-config"])
    text = capsys.readouterr().out
    assert not (tmp_path / "out").exists()                             # printed, not trained
    (tmp_path / "run.yaml").write_text(text)
    assert command_configs([cmd, "--config", tmp_path / "run.yaml"]) == configs == command_configs(argv)
    assert (configs["ModelConfig"].dtype, configs["TrainConfig"].mixed_precision, configs["TrainConfig"].max_grad_norm) == ("bfloat16", "bf16", None)
    assert configs["TrainConfig"].lr == {"sft": 2e-5, "rm": 1e-5, "ppo": 1e-5, "grpo": 1e-6, "rloo": 1e-6}.get(cmd, 5e-6)   # each command's own
    if cmd == "simpo": assert (configs["SimPOConfig"].gamma, configs["SimPOConfig"].beta) == (0.7, 2.0)
    if cmd == "orpo": assert configs["ORPOConfig"].lam == 0.25
    if cmd in ("grpo", "rloo"):                                          # a repeated list flag adds up
        assert configs["RewardsConfig"].reward_fn == ["rlhf_nb.sentiment:sentiment_reward", "m:f"]
        assert configs["GRPOConfig"].advantage == cmd
    assert command_configs([cmd, "--config", tmp_path / "run.yaml", "--seed", "4"])["TrainConfig"].seed == 4

def test_required_settings_come_from_a_flag_or_the_file(tmp_path, capsys):
    from rlhf_nb.cli import main
    with pytest.raises(SystemExit) as e: main(["dpo", "--model", "m"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "required: --dataset, --output-dir" in err and "dataset:, output_dir: in the --config file" in err
    cfg = config(tmp_path / "part.yaml", dataset="d.jsonl", output_dir=tmp_path / "out")
    with pytest.raises(SystemExit): main(["dpo", "--config", cfg])                  # --model still missing
    assert "required: --model" in capsys.readouterr().err

def test_online_dpo_samples_its_pairs_from_the_policy(files):
    # a policy that ends its responses (a random one never says EOS), then two online rounds ranked by a reward function
    rlhf_nb("sft", "--model", files / "tiny", "--dataset", files / "data.jsonl", "--output-dir", files / "ends", "--max-steps", 30,
            "--lr", 1e-2, "--batch-size", 8, "--max-length", 32, "--quiet")
    (files / "prompts16.jsonl").write_text("".join(json.dumps({"prompt": f"Film {i} was"}) + "\n" for i in range(16)))
    (files / "short.py").write_text("def short(prompts, completions):\n    return [-len(c) for c in completions]\n")
    out = files / "online"
    r = rlhf_nb("dpo", "--online", "--model", files / "ends" / "final", "--dataset", files / "prompts16.jsonl", "--output-dir", out,
                "--reward-fn", f"{files / 'short.py'}:short", "--rounds", 2, "--samples-per-prompt", 4, "--max-new-tokens", 8,
                "--max-steps", 3, "--batch-size", 4, "--max-length", 32, "--lr", 1e-3, "--quiet")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["rounds"] == 2 and all(0 < p <= 16 for p in summary["pairs"])
    rounds = json.loads((out / "rounds.json").read_text())
    assert [x["pairs"] + x["ties"] + x["too_few_usable"] for x in rounds] == [16, 16]      # every prompt accounted for
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(x["round"], x["step"]) for x in rows] == [(0, 1), (0, 2), (0, 3), (1, 4), (1, 5), (1, 6)]
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins"} <= set(rows[0])
    assert (out / "final" / "config.json").exists()
    r = rlhf_nb("dpo", "--online", "--model", files / "tiny", "--dataset", files / "prompts16.jsonl", "--output-dir", files / "o2", check=False)
    assert r.returncode == 1 and "--reward-fn" in r.stderr
