"""Every data format on six real Hugging Face tokenizers with their genuine chat templates (../shared/realworld): the
prompt is masked, each trained response ends with exactly one end-of-turn token that is in the loss, BOS appears
once, the trained tokens decode back to the response, and one step of SFT / RM / DPO / KTO runs on a tiny random
model with the tokenizer's vocabulary. Skipped, with the reason, where ../shared is absent (a user's clone)."""
import warnings
from pathlib import Path
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification
from rlhf_nb.models import load_tokenizer
from rlhf_nb.data import tokenize_sft, tokenize_preferences, tokenize_unpaired, unpair_preferences, tokenize_prompts
from rlhf_nb.train import TrainConfig
from rlhf_nb.sft import sft
from rlhf_nb.reward import train_reward_model
from rlhf_nb.dpo import dpo, DPOConfig
from rlhf_nb.kto import kto, KTOConfig

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2] / "shared" / "realworld" / "tokenizers"
FAMILIES = ["qwen2.5-instruct", "llama-3.1-instruct", "gemma-2-it", "mistral-7b-instruct-v0.3", "deepseek-r1-distill-qwen", "gpt2"]
pytestmark = pytest.mark.skipif(not ROOT.exists(), reason=f"real tokenizers not found at {ROOT}: ../shared is absent "
                                "(it is in the project's CI, not in a user's clone)")

USER = {"role": "user", "content": "Which film should I watch tonight?"}
GOOD, BAD = "Moonrise: it is funny and kind.", "None of them, they are all dull."
A = lambda text: {"role": "assistant", "content": text}
FORMATS = {
    "sft_strings": ("sft", [{"prompt": "Which film should I watch tonight?", "completion": " " + GOOD}]),
    "sft_messages": ("sft", [{"messages": [USER, A(GOOD)]}]),
    "sft_prompt_completion_messages": ("sft", [{"prompt": [USER], "completion": [A(GOOD)]}]),
    "pref_strings": ("pref", [{"prompt": "Which film should I watch tonight?", "chosen": " " + GOOD, "rejected": " " + BAD}]),
    "pref_messages": ("pref", [{"prompt": [USER], "chosen": [A(GOOD)], "rejected": [A(BAD)]}]),
    "pref_implicit_messages": ("pref", [{"chosen": [USER, A(GOOD)], "rejected": [USER, A(BAD)]}]),
    "pref_implicit_strings": ("pref", [{"chosen": f"\n\nHuman: {USER['content']}\n\nAssistant: {GOOD}",
                                        "rejected": f"\n\nHuman: {USER['content']}\n\nAssistant: {BAD}"}]),
    "pref_mixed": ("pref", [{"prompt": USER["content"], "chosen": [USER, A(GOOD)], "rejected": [USER, A(BAD)]}]),
}
CHAT = {k for k, (_, rows) in FORMATS.items() if isinstance(next(v for v in rows[0].values()), list)
        or any(isinstance(v, list) for v in rows[0].values())}


@pytest.fixture(scope="module", params=FAMILIES)
def tok(request):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_tokenizer(str(ROOT / request.param))


def end_ids(tok) -> set:
    "Tokens that may close a trained turn: EOS and the special tokens a template ends turns with."
    return {tok.eos_token_id, *tok.all_special_ids} - {tok.pad_token_id if tok.pad_token_id != tok.eos_token_id else None}


def check_sequence(tok, ids, labels, response_text):
    "The invariants of one tokenized (input_ids, labels) sequence."
    n_prompt = next(i for i, l in enumerate(labels) if l != -100)
    assert all(l == -100 for l in labels[:n_prompt]) and all(l != -100 for l in labels[n_prompt:]), "prompt masked, response trained"
    trained = labels[n_prompt:]
    ends = end_ids(tok)
    assert trained[-1] in ends, f"the response ends with {tok.decode(trained[-1:])!r}, not an end-of-turn token"
    assert sum(t == trained[-1] for t in trained) == 1, f"end-of-turn token {tok.decode(trained[-1:])!r} trained more than once"
    if tok.bos_token_id is not None and tok.bos_token_id != tok.eos_token_id:
        assert ids.count(tok.bos_token_id) <= 1, "BOS twice"
    assert tok.decode(trained[:-1]).strip() == response_text.strip(), tok.decode(trained)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_format(tok, fmt):
    kind, rows = FORMATS[fmt]
    if tok.chat_template is None and fmt in CHAT:
        fn = tokenize_sft if kind == "sft" else tokenize_preferences
        with pytest.raises(ValueError, match="no chat template"): fn(rows, tok)
        return
    if kind == "sft":
        r = tokenize_sft(rows, tok)[0][0]
        check_sequence(tok, r["input_ids"], r["labels"], GOOD)
        return
    r = tokenize_preferences(rows, tok)[0][0]
    for f, text in (("chosen", GOOD), ("rejected", BAD)):
        check_sequence(tok, r[f"{f}_input_ids"], r[f"{f}_labels"], text)
    n = next(i for i, l in enumerate(r["chosen_labels"]) if l != -100)
    assert r["chosen_input_ids"][:n] == r["rejected_input_ids"][:n], "both responses follow the same prompt ids"
    u, _ = tokenize_unpaired(unpair_preferences(rows), tok)
    for row, text in zip(u, (GOOD, BAD)): check_sequence(tok, row["input_ids"], row["labels"], text)


def test_prompt_matches_the_chat_prompt(tok):
    "A message prompt for generation is the same ids the training rows put before their responses."
    if tok.chat_template is None: pytest.skip("no chat template (GPT-2): string prompts only")
    gen = tokenize_prompts([{"prompt": [USER]}], tok)[0][0]["input_ids"]
    r = tokenize_preferences(FORMATS["pref_messages"][1], tok)[0][0]
    assert r["chosen_input_ids"][:len(gen)] == gen and r["chosen_labels"][len(gen) - 1] == -100 != r["chosen_labels"][len(gen)]


def tiny(tok, cls=LlamaForCausalLM):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, num_labels=1)
    return cls(cfg)


def test_one_step_of_each_trainer(tok, tmp_path):
    "One step of SFT, RM, DPO and KTO on rows of every format at once (a list may mix them), with this tokenizer."
    chat = tok.chat_template is not None
    usable = lambda kind: [r for k, (kd, rows) in FORMATS.items() if kd == kind and (chat or k not in CHAT) for r in rows]
    sft_rows, pairs = usable("sft") + ([{"messages": CONV}] if chat else []), usable("pref")
    c = lambda name: TrainConfig(output_dir=str(tmp_path / name), max_steps=1, batch_size=len(pairs), progress=False, save_final=False)
    for t in (sft(tiny(tok), tok, sft_rows, c("sft")), train_reward_model(tiny(tok, LlamaForSequenceClassification), tok, pairs, c("rm")),
              dpo(tiny(tok), tok, pairs, c("dpo"), DPOConfig(max_length=128)), kto(tiny(tok), tok, pairs, c("kto"), KTOConfig(max_length=128))):
        assert t.step == 1 and torch.isfinite(torch.tensor(t.history[0]["loss"]))


CONV = [USER, A(GOOD), {"role": "user", "content": "And after that one?"}, A(BAD)]

def trained_runs(tok, ids, labels) -> list[list[int]]:
    "The runs of consecutive trained tokens."
    runs, cur = [], []
    for t, l in zip(ids, labels):
        if l != -100: cur.append(t)
        elif cur: runs.append(cur); cur = []
    return runs + ([cur] if cur else [])

def test_multi_turn_sft_trains_every_assistant_turn(tok):
    if tok.chat_template is None:
        with pytest.raises(ValueError, match="no chat template"): tokenize_sft([{"messages": CONV}], tok)
        return
    r = tokenize_sft([{"messages": CONV}], tok)[0][0]
    runs = trained_runs(tok, r["input_ids"], r["labels"])
    assert len(runs) == 2, [tok.decode(x) for x in runs]
    for run, text in zip(runs, (GOOD, BAD)):
        assert run[-1] in end_ids(tok) and sum(t == run[-1] for t in run) == 1
        assert tok.decode(run[:-1]).strip() == text
    if tok.bos_token_id is not None and tok.bos_token_id != tok.eos_token_id: assert r["input_ids"].count(tok.bos_token_id) <= 1
    last = tokenize_sft([{"messages": CONV}], tok, assistant_turns="last")[0][0]
    assert [tok.decode(x[:-1]).strip() for x in trained_runs(tok, last["input_ids"], last["labels"])] == [BAD]

def test_a_template_that_drops_a_message_is_refused():
    "Mistral v0.3's template puts the system prompt into the last user turn only when that turn ends the conversation."
    tok = load_tokenizer(str(ROOT / "mistral-7b-instruct-v0.3"))
    with pytest.raises(ValueError, match="leaves the system message"):
        tokenize_sft([{"messages": [{"role": "system", "content": "Be brief."}, *CONV]}], tok)
    with pytest.raises(ValueError, match="prefix"):
        tokenize_sft([{"messages": [{"role": "system", "content": "Be brief."}, *CONV]}], tok, assistant_turns="last")


def test_every_command_on_the_real_tokenizer(tok, tmp_path):
    "sft, rm, dpo and kto through the command line's code, each on another data format, with this tokenizer."
    import json
    from rlhf_nb.cli import main
    tok.save_pretrained(tmp_path / "m"); tiny(tok).save_pretrained(tmp_path / "m")
    chat = tok.chat_template is not None
    data = {"sft": [{"messages": CONV}] * 2 if chat else FORMATS["sft_strings"][1] * 2,
            "rm": FORMATS["pref_implicit_strings"][1] * 2,
            "dpo": FORMATS["pref_mixed" if chat else "pref_strings"][1] * 2,
            "kto": FORMATS["pref_messages" if chat else "pref_strings"][1] * 2}
    for cmd, rows in data.items():
        (tmp_path / f"{cmd}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        out = main([cmd, "--model", str(tmp_path / "m"), "--dataset", str(tmp_path / f"{cmd}.jsonl"), "--output-dir",
                    str(tmp_path / cmd), "--max-steps", "1", "--batch-size", "2", "--max-length", "128", "--quiet"])
        assert out["steps"] == 1 and (tmp_path / cmd / "final").exists(), cmd

def test_a_string_prompt_that_holds_its_bos_gets_no_second_one():
    "A prompt rendered with the template beforehand, given as a string: Llama 3.1's tokenizer would add BOS again."
    tok = load_tokenizer(str(ROOT / "llama-3.1-instruct"))
    rendered = tok.apply_chat_template([USER], tokenize=False, add_generation_prompt=True)
    r = tokenize_preferences([{"prompt": rendered, "chosen": GOOD + "<|eot_id|>", "rejected": BAD + "<|eot_id|>"}], tok)[0][0]
    assert r["chosen_input_ids"].count(tok.bos_token_id) == 1
    assert tokenize_prompts([{"prompt": rendered}], tok)[0][0]["input_ids"].count(tok.bos_token_id) == 1


TOOLS = [{"type": "function", "function": {"name": "search", "description": "Search films", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]
CALL = {"role": "assistant", "content": None,
        "tool_calls": [{"id": "call00001", "type": "function", "function": {"name": "search", "arguments": {"q": "Moonrise"}}}]}
TOOL_CONV = [{"role": "user", "content": "Find Moonrise."}, CALL,
             {"role": "tool", "content": "Moonrise (2012)", "name": "search", "tool_call_id": "call00001"},
             {"role": "assistant", "content": "It is from 2012."}]

@pytest.mark.parametrize("family", ["qwen2.5-instruct", "llama-3.1-instruct", "mistral-7b-instruct-v0.3"])
def test_tool_calls_and_a_tools_column(family):
    "The templates that know tools: the call and the answer are trained, each closed by its end token; the tool's output is context."
    tok = load_tokenizer(str(ROOT / family))
    r = tokenize_sft([{"messages": TOOL_CONV, "tools": TOOLS}], tok)[0][0]
    runs = trained_runs(tok, r["input_ids"], r["labels"])
    assert len(runs) == 2 and "Moonrise" in tok.decode(runs[0]) and tok.decode(runs[1][:-1]).strip() == "It is from 2012."
    assert all(run[-1] in end_ids(tok) for run in runs)
    assert "Moonrise (2012)" in tok.decode(r["input_ids"]) and "Moonrise (2012)" not in tok.decode(sum(runs, []))
    assert "Search films" in tok.decode(r["input_ids"])           # the tools column reached the template

def test_sentencepiece_response_keeps_its_spacing():
    "Mistral's tokenizer gives a text tokenized alone a leading '▁'; a response is tokenized in the prompt's context instead."
    tok = load_tokenizer(str(ROOT / "mistral-7b-instruct-v0.3"))
    r = tokenize_sft([{"prompt": "Q: 2+2=", "completion": "4"}], tok)[0][0]
    assert tok.decode(r["input_ids"]).endswith("2+2=4</s>")
    n = next(i for i, l in enumerate(r["labels"]) if l != -100)
    assert r["input_ids"][:n] == tok("Q: 2+2=")["input_ids"]              # the prompt's ids are what generation sees
