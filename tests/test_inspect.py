"""`rlhf_nb inspect` as a user meets it: a saved tokenizer folder and a .jsonl file, the tiny tokenizer and six real
tokenizers with their own chat templates. Each shown token's part (prompt / trained / masked / pad) is checked against
the labels the tokenize functions write, the BOS / EOS / end-of-turn counts against what each template renders, the exit
status on good and deliberately bad data, and the HTML page in headless Chromium.

The real tokenizers live outside the repository (`../shared/realworld/tokenizers/<family>`); the tests that need them
skip, saying so, where that folder is absent."""
import argparse, contextlib, functools, io, json, os, shutil, subprocess, sys, warnings
from pathlib import Path
import pytest
from rlhf_nb.models import tiny_tokenizer, load_tokenizer
from rlhf_nb.data import tokenize_sft, tokenize_preferences
from rlhf_nb.inspect import inspect_data, main, add_parser, format_html, stop_tokens, _use_color

ROOT = Path(__file__).resolve().parent.parent
REAL = Path(__file__).resolve().parents[2] / "shared" / "realworld" / "tokenizers"
FAMILIES = ["qwen2.5-instruct", "llama-3.1-instruct", "gemma-2-it", "mistral-7b-instruct-v0.3", "deepseek-r1-distill-qwen", "gpt2"]
CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
U = lambda c: {"role": "user", "content": c}
A = lambda c: {"role": "assistant", "content": c}

@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore"); yield

def real_dir(family: str) -> Path:
    d = REAL / family
    if not d.is_dir(): pytest.skip(f"no real tokenizer at {d}: the shared realworld fixtures (../shared/realworld) are not on this machine")
    return d

@functools.cache
def _load(family: str): return load_tokenizer(str(REAL / family))

def real_tok(family: str):
    "The family's tokenizer as the trainers load it (once per session: Gemma's takes seconds)."
    real_dir(family)
    return _load(family)

def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path

def run(*argv) -> tuple[int, str, str]:
    "`inspect` in this process, as the console script runs it: (exit status, stdout, stderr)."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()

def padded_roles(labels: list, width: int) -> list:
    "The parts of a right-padded row, computed from its labels alone: the reference the inspection is checked against."
    first = next(t for t, l in enumerate(labels) if l != -100)
    own = ["trained" if l != -100 else "prompt" if t < first else "masked" for t, l in enumerate(labels)]
    return own + ["pad"] * (width - len(labels))

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("inspect")
    tiny_tokenizer().save_pretrained(d / "tok")
    return d

# ---------------------------------------------------------------- the tiny tokenizer

def test_tiny_roles_counts_and_exit_status(tiny):
    tok = load_tokenizer(str(tiny / "tok"))
    rows = [{"prompt": f"Film {i} was", "completion": [" good.", " great fun."][i % 2]} for i in range(10)]
    insp = inspect_data(rows, tok, n_rows=2, max_length=32)
    # by hand: "Film 0 was" = F·il·m·Ġ·0·Ġwas, " good." = Ġgood·. + EOS, " great fun." = Ġgreat·Ġf·u·n·. + EOS
    s0 = insp.shown[0]
    assert tok.convert_ids_to_tokens(s0.ids[:9]) == ["F", "il", "m", "Ġ", "0", "Ġwas", "Ġgood", ".", "<|endoftext|>"]
    assert s0.roles == ["prompt"] * 6 + ["trained"] * 3 + ["pad"] * 3
    assert insp.shown[1].roles == ["prompt"] * 6 + ["trained"] * 6
    ds, _ = tokenize_sft(rows[:2], tok, max_length=32)
    for s, r in zip(insp.shown, ds): assert s.roles == padded_roles(r["labels"], len(s.ids))
    c = s0.counts
    assert (c.bos, c.eos, c.eos_trained, c.end_of_turn, c.end_of_turn_trained) == (0, 1, 1, 1, 1)
    assert insp.ok and insp.checks.eos_trained == 10

    data = jsonl(tiny / "sft.jsonl", rows)
    status, out, err = run("--model", tiny / "tok", "--dataset", data, "--rows", 2, "--html", tiny / "page.html")
    assert status == 0, err
    assert "Film 0 was[[ good.<|endoftext|>]]<<<|pad|> ×3>>" in out and "\x1b[" not in out      # not a tty: plain markers
    assert json.loads(out.strip().splitlines()[-1])["problems"] == 0
    status, out, err = run("--model", tiny / "tok", "--dataset", data, "--max-length", 8)
    assert status == 1 and err.strip().splitlines()[-1].startswith("rlhf_nb: error: inspect: ")
    assert "had a response cut" in err and "PROBLEM" in out
    assert run("--model", tiny / "tok", "--dataset", data, "--max-length", 8, "--max-cut", 1.0)[0] == 0

def test_tiny_multi_turn_masks_the_user_turns(tiny):
    "Every position of a conversation gets the part its label says; masked user turns between trained turns are 'masked'."
    tok = load_tokenizer(str(tiny / "tok"))
    rows = [{"messages": [U("Hi"), A("Hello"), U("Bye"), A("Bye now")]}, {"messages": [U("Hi"), A("Hello")]}]
    insp = inspect_data(rows, tok, max_length=64)
    ds, _ = tokenize_sft(rows, tok, max_length=64)
    for s, r in zip(insp.shown, ds): assert s.roles == padded_roles(r["labels"], len(s.ids))
    roles = insp.shown[0].roles
    prompt_text = "".join(p for p, r in zip(insp.shown[1].pieces, insp.shown[1].roles) if r == "prompt")
    assert prompt_text == "<|user|>Hi<|endoftext|><|assistant|>"                          # the tiny template, by hand
    if "masked" in roles:                                                                 # every turn trained
        assert "".join(p for p, r in zip(insp.shown[0].pieces, roles) if r == "masked") == "<|user|>Bye<|endoftext|><|assistant|>"
    assert insp.ok, insp.problems

def test_column_names_and_chat_template_as_for_training(tiny):
    "--prompt-key/--completion-key and --chat-template read the data as the training commands do."
    from rlhf_nb.models import TINY_CHAT_TEMPLATE
    bare = tiny_tokenizer(); bare.chat_template = None; bare.save_pretrained(tiny / "bare")
    (tiny / "chat.jinja").write_text(TINY_CHAT_TEMPLATE)
    conv = jsonl(tiny / "conv.jsonl", [{"question": [U("Hi")], "answer": [A("Hello")]}] * 2)
    status, out, err = run("--model", tiny / "bare", "--dataset", conv)
    assert status == 1 and "cannot tell the format" in err, err                        # no prompt/completion columns
    status, out, err = run("--model", tiny / "bare", "--dataset", conv, "--prompt-key", "question", "--completion-key", "answer")
    assert status == 1 and "no chat template" in err, err
    status, out, err = run("--model", tiny / "bare", "--dataset", conv, "--prompt-key", "question", "--completion-key", "answer",
                           "--chat-template", tiny / "chat.jinja")
    assert status == 0, err
    assert "<|user|>Hi<|endoftext|><|assistant|>[[Hello<|endoftext|>]]" in out

def test_parser_plugs_into_the_rlhf_nb_command():
    "The one line the `rlhf_nb` parser needs: add_parser(sub) on its sub-parsers gives `inspect` with its options."
    from rlhf_nb.cli import parser
    p = parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    if "inspect" not in sub.choices: add_parser(sub)
    a = p.parse_args(["inspect", "--model", "m", "--dataset", "d.jsonl", "--format", "unpaired", "--rows", "1"])
    assert (a.command, a.format, a.rows, a.max_length, a.max_cut, a.color) == ("inspect", "unpaired", 1, 512, 0.05, "auto")
    assert a.fn.__module__ == "rlhf_nb.inspect" and a.fn.__name__ == "_cmd_inspect"

def test_colour_only_in_a_terminal_without_no_color(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self): return True
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr(sys, "stdout", Tty())
    assert _use_color("auto") and not _use_color("never")
    monkeypatch.setenv("NO_COLOR", "1")
    assert not _use_color("auto") and _use_color("always")
    monkeypatch.setattr(sys, "stdout", io.StringIO())                                    # a pipe or a file
    monkeypatch.delenv("NO_COLOR")
    assert not _use_color("auto")

def test_a_real_process(tiny):
    "Through a real process (python -m rlhf_nb.inspect): colour when asked, exit status 1 and one line on stderr saying why."
    data = jsonl(tiny / "few.jsonl", [{"prompt": "Film 0 was", "completion": " good."}] * 3)
    cmd = [sys.executable, "-m", "rlhf_nb.inspect", "--model", str(tiny / "tok"), "--dataset", str(data)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run(cmd + ["--color", "always", "--max-length", "6"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1 and "\x1b[38;5;22;48;5;157m" in r.stdout                   # a trained token's colour
    assert r.stderr.strip().splitlines()[-1].startswith("rlhf_nb: error: inspect: ") and "Traceback" not in r.stderr

# ---------------------------------------------------------------- real tokenizers

# per family, by hand from its chat template (../shared/realworld/README.md): BOS tokens, and the stop tokens inside the
# prompt of [user "Hi"] (Qwen: its default system turn and the user turn end with <|im_end|>; Llama 3.1: its fixed
# system block and the user turn end with <|eot_id|>; Gemma: the user turn ends with <end_of_turn>; Mistral, DeepSeek:
# none), and the text the assistant turn trains ("Hello!" then a stop token; Mistral renders a space after [/INST]).
EXPECTED = {"qwen2.5-instruct": (0, 2, "Hello!"), "llama-3.1-instruct": (1, 2, "Hello!"), "gemma-2-it": (1, 1, "Hello!"),
            "mistral-7b-instruct-v0.3": (1, 0, " Hello!"), "gpt2": (0, 0, " Hello!")}

@pytest.mark.parametrize("family", [f for f in FAMILIES if f in EXPECTED])
def test_real_tokenizer_good_rows(family, tmp_path):
    tok = real_tok(family)
    chat = tok.chat_template is not None
    rows = ([{"prompt": [U("Hi")], "completion": [A("Hello!")]}, {"prompt": [U("What is the capital of France?")], "completion": [A("Paris.")]}]
            if chat else [{"prompt": "Hi.", "completion": " Hello!"}, {"prompt": "What is the capital of France?", "completion": " Paris."}])
    insp = inspect_data(rows, tok, max_length=128)
    assert insp.ok, insp.problems
    ds, _ = tokenize_sft(rows, tok, max_length=128)
    for s, r in zip(insp.shown, ds): assert s.roles == padded_roles(r["labels"], len(s.ids))
    bos, prompt_stops, answer = EXPECTED[family]
    s, stops = insp.shown[0], stop_tokens(tok)
    assert s.counts.bos == bos
    assert sum(i in stops for i, r in zip(s.ids, s.roles) if r == "prompt") == prompt_stops
    trained = [i for i, r in zip(s.ids, s.roles) if r == "trained"]
    assert trained[-1] in stops and s.counts.end_of_turn_trained >= 1                  # the turn ends on a trained stop token
    assert "".join(p for p, r in zip(s.pieces, s.roles) if r == "trained").startswith(answer)
    assert s.counts.end_of_turn == prompt_stops + s.counts.end_of_turn_trained

def test_deepseek_template_breaks_the_prefix(tmp_path):
    "DeepSeek-R1's generation prompt opens `<think>\\n`, which the rendered conversation does not hold: exit status 1."
    rows = [{"prompt": [U("Hi")], "completion": [A("Hello!")]}] * 2
    status, out, err = run("--model", real_dir("deepseek-r1-distill-qwen"), "--dataset", jsonl(tmp_path / "d.jsonl", rows))
    assert status == 1 and "does not render the prompt as a prefix" in err and "<think>" in err, err
    insp = inspect_data(rows, real_tok("deepseek-r1-distill-qwen"))
    assert insp.prefix["checked"] == 2 and insp.prefix["last"] == [0, 1]

def test_mistral_system_prompt_vanishes(tmp_path):
    "Mistral v0.3 writes the system prompt only into a conversation that ends on a user turn: the prompt is no prefix."
    tok = real_tok("mistral-7b-instruct-v0.3")
    insp = inspect_data([{"messages": [{"role": "system", "content": "Be brief."}, U("Hi"), A("Hello!")]}], tok)
    assert not insp.ok and insp.prefix["last"] == [0]
    assert "Be brief." in insp.prefix["examples"]["last"]

def test_llama_prompt_already_rendered_gets_one_bos_and_a_doubled_one_fails(tmp_path):
    "A string prompt that already holds the rendered template keeps its one BOS; a text that holds two is flagged."
    tok = real_tok("llama-3.1-instruct")
    rendered = tok.apply_chat_template([U("Hi")], tokenize=False, add_generation_prompt=True)
    rows = [{"prompt": rendered, "completion": "Hello!<|eot_id|>"}]
    insp = inspect_data(rows, tok)
    assert insp.shown[0].counts.bos == 1 and insp.checks.bos_twice == []
    doubled = [{"prompt": tok.bos_token + rendered, "completion": "Hello!<|eot_id|>"}]
    assert inspect_data(doubled, tok).checks.bos_twice == [0]
    status, _, err = run("--model", real_dir("llama-3.1-instruct"), "--dataset", jsonl(tmp_path / "d.jsonl", doubled))
    assert status == 1 and "'<|begin_of_text|>' appears more than once in row 0" in err, err

def test_mistral_response_in_context(tmp_path):
    """Mistral's SentencePiece prepends '▁' to a text tokenized alone: the response is taken as the joined text tokenizes it
    when the prompt's ids stay a prefix ('2+2=' + '4' trains '4'); after a prompt that ends with a space it cannot be, and is flagged."""
    tok = real_tok("mistral-7b-instruct-v0.3")
    rows = [{"prompt": "Q: 2+2=", "completion": "4"}, {"prompt": "Film 0 was", "completion": " good."}, {"prompt": "Say hi: ", "completion": "hello"}]
    insp = inspect_data(rows, tok)
    assert insp.retok.text_differs == [2] and insp.retok.checked == 3 and not insp.ok
    assert "".join(p for p, r in zip(insp.shown[0].pieces, insp.shown[0].roles) if r == "trained") == "4</s>"

def test_gemma_stops_on_end_of_turn(tmp_path):
    "Gemma's turns end on <end_of_turn>; whether <eos> is trained too, every row trains a stop token."
    tok = real_tok("gemma-2-it")
    assert set(stop_tokens(tok).values()) == {"<eos>", "<end_of_turn>"}
    insp = inspect_data([{"messages": [U("Hi"), A("Hello!")]}] * 2, tok)
    assert insp.ok and insp.checks.no_stop == []
    assert insp.checks.stop_rows["<end_of_turn>"][1] == [0, 1]                           # trained in both rows
    if not insp.checks.eos_trained: assert any("<eos>" in w and "stop_token_id" in w for w in insp.warnings), insp.warnings
    bad = inspect_data([{"messages": [{"role": "system", "content": "Be brief."}, U("Hi"), A("Hello!")]}], tok)
    assert not bad.ok and any("System role not supported" in p for p in bad.problems)

# ---------------------------------------------------------------- the HTML page, in a browser

def _pixels(png: Path) -> dict:
    from PIL import Image
    img = Image.open(png).convert("RGB")
    return img.size, {rgb: n for n, rgb in img.getcolors(maxcolors=1 << 22)}

@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH: `apt-get install -y chromium`")
def test_html_page_in_chromium(tmp_path):
    "The page draws prompt, trained, masked and padding tokens in their colours, the legend and a verdict."
    tok = real_tok("qwen2.5-instruct")
    rows = [{"messages": [U("What is 2+2?"), A("4."), U("And 3+3?"), A("Six, since three and three make six.")]},
            {"messages": [U("Hi"), A("Hello!")]}]
    insp = inspect_data(rows, tok, n_rows=2)
    assert insp.ok, insp.problems
    page = tmp_path / "page.html"
    page.write_text(format_html(insp), encoding="utf-8")
    text = page.read_text()
    assert "<script" not in text and "http" not in text                              # self-contained
    assert text.count('class="t pad"') == 2 and 'title="#0 · id 151644 · prompt"' in text
    png = tmp_path / "shot.png"
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                        f"--screenshot={png}", "--window-size=1280,900", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and png.exists(), r.stderr[-2000:]
    size, colors = _pixels(png)
    assert size == (1280, 900)
    hexes = {"prompt": ((0xdb, 0xea, 0xfe), (0xbf, 0xdb, 0xfe)), "trained": ((0xbb, 0xf7, 0xd0), (0x86, 0xef, 0xac)),
             "masked": ((0xfe, 0xf0, 0x8a), (0xfd, 0xe0, 0x47)), "pad": ((0xe5, 0xe7, 0xeb),), "verdict": ((0xdc, 0xfc, 0xe7),)}
    if not any("masked" in s.roles for s in insp.shown): del hexes["masked"]         # the data pipeline trains the last turn only
    drawn = {k: sum(colors.get(c, 0) for c in cs) for k, cs in hexes.items()}
    assert all(n > 300 for n in drawn.values()), drawn                                 # every part is on screen, in its colour
