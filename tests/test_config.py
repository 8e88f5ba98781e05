"Settings from one place: config dataclasses -> command-line flags and YAML keys (rlhf_nb.config), on small classes and on the real ones."
import argparse, contextlib, dataclasses, io
from dataclasses import dataclass, field
from typing import Callable
import pytest
from rlhf_nb.config import (ConfigError, DataConfig, add_config_args, config_fields, load_config_file, resolve_configs, to_yaml)


@dataclass
class Knobs:
    "A small config: one field of each kind."
    lr: float = 1e-3                      # peak learning rate
    max_steps: int | None = None          # optimizer steps; None = one epoch
    precompute_ref: bool = False          # score the data once first
    target_modules: list[str] | None = None  # modules to adapt
    loss_kwargs: dict = field(default_factory=dict)  # further keyword arguments
    loss: str | Callable = "sigmoid"      # a registered name or a function
    share: float = 0.5                    # 50% of the rows

    def __post_init__(self):
        if self.lr <= 0: raise ValueError(f"Knobs.lr must be > 0, got {self.lr}")


@dataclass
class More:
    "A second config of the same command."
    beta: float = 0.1                     # β


def knobs_parser(**defaults) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="knobs")
    add_config_args(p, Knobs, "knobs", defaults=defaults or None)
    return p


def usage_error(p, argv) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e: p.parse_args(argv)
    assert e.value.code == 2
    return err.getvalue()


# ---------------------------------------------------------------- flags

def test_help_is_the_fields_comment_with_the_default_in_force():
    h = knobs_parser(lr=0.25).format_help()
    assert "peak learning rate (default: 0.25)" in h          # the command's default, not the field's
    assert "50% of the rows (default: 0.5)" in h               # a % in a comment is text, not a format
    assert "optimizer steps; None = one epoch" in h and "(default: None)" not in h
    assert "knobs:\n  A small config: one field of each kind." in h
    assert config_fields(Knobs)["max_steps"] == (int | None, None, "optimizer steps; None = one epoch")


def test_nothing_given_sets_nothing():
    assert vars(knobs_parser().parse_args([])) == {}


def test_dash_and_underscore_spellings_are_one_option():
    p = knobs_parser()
    assert p.parse_args(["--max-steps", "3"]).max_steps == p.parse_args(["--max_steps", "3"]).max_steps == 3
    h = p.format_help()
    assert "--max-steps MAX_STEPS" in h and "--max_steps" not in h   # the second spelling works without cluttering the help


def test_bool_flags():
    p = knobs_parser()
    assert p.parse_args(["--precompute-ref"]).precompute_ref is True
    assert p.parse_args(["--no-precompute-ref"]).precompute_ref is False
    assert p.parse_args(["--precompute_ref"]).precompute_ref is True
    assert p.parse_args(["--no_precompute_ref"]).precompute_ref is False
    assert p.parse_args(["--precompute-ref", "--no-precompute-ref"]).precompute_ref is False   # the last one wins
    assert "--precompute-ref, --no-precompute-ref" in p.format_help()


def test_lists_dicts_names_and_none():
    p = knobs_parser()
    a = p.parse_args(["--target-modules", "q_proj", "v_proj", "--loss-kwargs", '{"gamma": 2, "on": true}', "--loss", "pkg.mod:fn",
                      "--max-steps", "none"])
    assert vars(a) == {"target_modules": ["q_proj", "v_proj"], "loss_kwargs": {"gamma": 2, "on": True}, "loss": "pkg.mod:fn",
                       "max_steps": None}
    assert "expected a JSON object" in usage_error(p, ["--loss-kwargs", "[1, 2]"])
    assert "not JSON" in usage_error(p, ["--loss-kwargs", "{gamma: 2}"])
    assert "argument --max-steps: invalid int value: '1.5'" in usage_error(p, ["--max-steps", "1.5"])
    assert "argument --lr: invalid float value: 'fast'" in usage_error(p, ["--lr", "fast"])


def test_a_type_without_a_flag_form_is_refused():
    @dataclass
    class Odd:
        ids: set[int] = field(default_factory=set)
    with pytest.raises(TypeError, match="no YAML or command-line form"): add_config_args(argparse.ArgumentParser(), Odd)


# ---------------------------------------------------------------- YAML files

def test_yaml_file_reading(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("lr: 5e-6\nmax-steps: 10\ntarget_modules: [q_proj, v_proj]\nloss_kwargs: {gamma: 2}\nname: '1e5'\n")
    assert load_config_file(f) == {"lr": 5e-6, "max_steps": 10, "target_modules": ["q_proj", "v_proj"], "loss_kwargs": {"gamma": 2},
                                   "name": "1e5"}
    assert isinstance(load_config_file(f)["lr"], float)       # plain PyYAML would read 5e-6 as a string
    f.write_text("# nothing yet\n")
    assert load_config_file(f) == {}


@pytest.mark.parametrize("text,message", [
    ("lr: 1\nlr: 2\n", "the key 'lr' appears twice"),
    ("max-steps: 1\nmax_steps: 2\n", "are one setting; keep one"),
    ("- lr\n- beta\n", "expected a mapping of settings"),
    ("lr: [1\n", "not valid YAML"),
    ("1: 2\n", "the key 1 is not a name"),
])
def test_yaml_file_errors_name_the_file(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match="bad.yaml") as e: load_config_file(f)
    assert message in str(e.value)


def test_a_missing_file():
    with pytest.raises(FileNotFoundError, match="--config nope.yaml: no such file"): load_config_file("nope.yaml")


# ---------------------------------------------------------------- merging

def test_precedence_defaults_file_flags():
    got = resolve_configs([Knobs, More], {"lr": 0.1, "max_steps": 5, "beta": 1}, {"lr": 0.2}, file="run.yaml",
                          defaults={"max_steps": 2, "beta": 0.3})
    assert got == {"Knobs": Knobs(lr=0.2, max_steps=5), "More": More(beta=1.0)}
    assert resolve_configs([Knobs, More], {}, {}, defaults={"beta": 0.3})["More"].beta == 0.3
    assert resolve_configs([Knobs], None, None)["Knobs"] == Knobs()


def test_yaml_and_flags_through_a_real_parser(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("lr: 1e-4\nmax_steps: 7\nprecompute_ref: true\ntarget_modules: [q]\n")
    a = knobs_parser().parse_args(["--max-steps", "3", "--no-precompute-ref"])
    got = resolve_configs([Knobs], load_config_file(f), vars(a), file=f)["Knobs"]
    assert (got.lr, got.max_steps, got.precompute_ref, got.target_modules) == (1e-4, 3, False, ["q"])


def test_an_int_in_a_float_field_is_that_float():
    got = resolve_configs([Knobs], {"lr": 1}, {}, file="run.yaml")["Knobs"]
    assert got.lr == 1.0 and isinstance(got.lr, float)


def test_unknown_key_names_the_file_and_the_nearest_names():
    with pytest.raises(ConfigError) as e: resolve_configs([Knobs, More], {"max_step": 3, "bta": 1, "zzz": 0}, {}, file="run.yaml")
    msg = str(e.value)
    assert msg.startswith("run.yaml: unknown keys 'max_step' (did you mean 'max_steps'?), 'bta' (did you mean 'beta'?), 'zzz';"), msg
    assert "the keys are the fields of Knobs, More" in msg
    with pytest.raises(ConfigError, match="settings are one flat mapping"): resolve_configs([Knobs], {"train": {"lr": 1}}, {}, file="run.yaml")


@pytest.mark.parametrize("key,value,expected", [
    ("lr", "fast", "run.yaml: lr: expected a number, got 'fast'"),
    ("max_steps", 1.5, "run.yaml: max_steps: expected an integer or null, got 1.5"),
    ("max_steps", True, "run.yaml: max_steps: expected an integer or null, got True"),
    ("precompute_ref", "yes", "run.yaml: precompute_ref: expected true or false, got 'yes'"),
    ("target_modules", "q_proj", "run.yaml: target_modules: expected a list of strings or null, got 'q_proj'"),
    ("loss_kwargs", [1], "run.yaml: loss_kwargs: expected a mapping, got [1]"),
    ("loss", 3, "run.yaml: loss: expected a name"),
    ("lr", None, "run.yaml: lr: expected a number, got None"),
])
def test_wrong_type_names_key_file_and_type(key, value, expected):
    with pytest.raises(ConfigError) as e: resolve_configs([Knobs], {key: value}, {}, file="run.yaml")
    assert str(e.value).startswith(expected), str(e.value)


def test_out_of_range_is_the_dataclass_error_with_its_source():
    with pytest.raises(ConfigError, match=r"Knobs.lr must be > 0, got -1.0 \(set by run.yaml: lr\)"):
        resolve_configs([Knobs], {"lr": -1, "max_steps": 3}, {}, file="run.yaml")
    with pytest.raises(ConfigError, match=r"\(set by --lr\)"): resolve_configs([Knobs], {"lr": 1}, {"lr": -1.0}, file="run.yaml")


def test_two_classes_sharing_a_field_are_refused():
    @dataclass
    class AlsoLr:
        lr: float = 0.1
    with pytest.raises(ConfigError, match="Knobs.lr and AlsoLr.lr: two settings of one command share a name"):
        resolve_configs([Knobs, AlsoLr], {}, {})


# ---------------------------------------------------------------- the real configs

COMMANDS = ("sft", "rm", "dpo", "ipo", "kto", "ppo", "grpo", "rloo", "simpo", "orpo")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_distinct_typed_documented_options(command):
    from rlhf_nb.cli import config_classes
    classes = config_classes(command)
    resolve_configs(classes, {}, {})                              # no two classes share a name
    p = argparse.ArgumentParser()
    for cls in classes: add_config_args(p, cls)                   # every field has a flag form
    for cls in classes:
        for name, (hint, default, help) in config_fields(cls).items():
            assert f"--{name.replace('_', '-')}" in p._option_string_actions, (cls.__name__, name)


@pytest.mark.parametrize("command,changes", [
    ("sft", {"loss_per": "token", "from_preferences": "both", "chat_template_kwargs": {"enable_thinking": False}}),
    ("rm", {"center_coef": 0.01, "eval_split": "test", "max_prompt_length": 64}),
    ("dpo", {"loss": "robust", "label_smoothing": 0.1, "loss_kwargs": {"x": 1}, "lora_target_modules": ["q_proj", "v_proj"]}),
    ("ipo", {"tau": 0.5, "average_logps": True, "max_grad_norm": None, "run_name": "1e5"}),
    ("kto", {"desirable_weight": 1.5, "precompute_ref": True, "ref_cache": "cache", "lora_r": 8, "lora_alpha": 16}),
    ("ppo", {"kl_target": 2.0, "top_k": 20, "reward_fn": "rlhf_nb.sentiment:sentiment_reward", "shared_value": True, "lr": 1e-3}),
    ("grpo", {"num_generations": 8, "loss_aggregation": "constant", "clip_range_high": 0.28, "reward_fn": ["rlhf_nb.sentiment:sentiment_reward"]}),
    ("simpo", {"beta": 2.5, "gamma": 0.5, "max_length": 64}),
    ("orpo", {"lam": 0.2, "lora_r": 4}),
])
def test_to_yaml_round_trip_for_every_command(tmp_path, command, changes):
    from rlhf_nb.cli import COMMANDS as cmds, config_classes
    classes = config_classes(command)
    configs = resolve_configs(classes, {"model": "m", "dataset": "d.jsonl", "output_dir": "out", **changes}, {},
                              defaults=cmds[command].defaults)
    (tmp_path / "back.yaml").write_text(to_yaml(configs))
    back = resolve_configs(classes, load_config_file(tmp_path / "back.yaml"), {}, file=tmp_path / "back.yaml")
    assert back == configs
    for k, v in changes.items(): assert getattr(next(c for c in back.values() if hasattr(c, k)), k) == v


def test_to_yaml_writes_a_registered_loss_by_name_and_comments_each_key():
    from rlhf_nb.dpo import DPOConfig, hinge_loss
    text = to_yaml({"DPOConfig": DPOConfig(loss=hinge_loss)})
    assert "\nloss: hinge  # a name in `DPO_LOSSES`" in text
    assert text.startswith("# DPOConfig: What DPO minimises")


def test_real_config_errors(tmp_path):
    from rlhf_nb.cli import config_classes
    dpo = config_classes("dpo")
    cases = [({"lr": -1.0}, "TrainConfig.lr must be > 0"), ({"lora_dropout": 1.5}, "ModelConfig.lora_dropout"),
             ({"loss": "sigmod"}, "loss='sigmod'"), ({"schedule": "cosin"}, "TrainConfig.schedule='cosin'"),
             ({"load_in_4bit": True}, "needs lora_r > 0")]
    for values, message in cases:
        with pytest.raises(ConfigError) as e: resolve_configs(dpo, values, {}, file="run.yaml")
        key = next(iter(values))
        assert message in str(e.value) and f"run.yaml: {key}" in str(e.value), str(e.value)


def test_data_config_reads_renamed_columns_and_held_out_splits(tmp_path):
    import datasets
    from rlhf_nb.config import load_data
    rows = [{"q": f"Q{i}?", "a": " yes."} for i in range(5)]
    datasets.DatasetDict(train=datasets.Dataset.from_list(rows[:3]), test=datasets.Dataset.from_list(rows[3:])).save_to_disk(tmp_path / "dd")
    train, held = load_data(DataConfig(dataset=str(tmp_path / "dd"), eval_split="test", prompt_key="q", completion_key="a"))
    assert (len(train), len(held), held.column_names) == (3, 2, ["prompt", "completion"])
    assert load_data(dataclasses.replace(DataConfig(dataset=str(tmp_path / "dd"))))[1] is None
