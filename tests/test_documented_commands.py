"""Every `rlhf_nb ...` command the docs show runs, as a user would paste it.

The commands are read from README.md and the notebooks' markdown cells (fenced shell blocks, with `\\` continuations,
and inline code spans that name every required option), so a new documented command is picked up without touching
this file. Each one runs through the installed console script in a temporary folder, in the order its file shows
them (a `dpo --model runs/sft/final` finds the folder the `sft` before it wrote), shortened to CI size:

- training commands (those with `--max-steps`) get `--max-steps 2 --batch-size 2`, and PPO `--max-new-tokens 8`;
- `demo` runs its `--tiny` setting in place of `--quick` or the full run.

Hub ids cannot be downloaded here, so the few the docs use are swapped for local stand-ins (`HUB`), and the data
files they name are written into the folder (`DATA`). Both tables are explicit: a command naming a hub id or a data
file missing from them fails and says which table to extend. A config file the docs show (a fenced `yaml` block whose
first line is a comment naming it, `# dpo.yaml`) is written into the folder of the commands of the same file, so a
documented `--config dpo.yaml` runs the file the reader sees. Mentions of a command in running text (an inline
`rlhf_nb demo --quick`) are not run, but their sub-command and flags must exist, and every `--reward-fn` the docs name
must be a function of (prompts, completions)."""
import argparse, functools, importlib, json, os, re, shlex, subprocess
from dataclasses import dataclass
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_NUM_THREADS": "1"}

# hub id in the docs -> the local stand-in the `standins` fixture builds
HUB = {"gpt2": "lm", "Qwen/Qwen2.5-0.5B": "lm", "stanfordnlp/imdb": "imdb",
       "siebert/sentiment-roberta-large-english": "clf"}
GOOD, BAD = ["good", "great", "fun", "moving"], ["bad", "dull", "weak", "silly"]
_pairs = [{"prompt": f"Film {i} was", "chosen": f" {GOOD[i % 4]}.", "rejected": f" {BAD[i % 4]}."} for i in range(8)]
# data file named in the docs -> its rows, in the format the command it goes with reads (formats: nbs/01_data)
DATA = {"sft.jsonl": [{"prompt": f"Film {i} was", "completion": f" {GOOD[i % 4]}."} for i in range(8)],
        "prefs.jsonl": _pairs, "heldout.jsonl": _pairs[:4],
        "prompts.jsonl": [{"prompt": f"Film {i} was"} for i in range(4)]}
SHORT = {"--max-steps": "2", "--batch-size": "2"}                     # every training command
SHORT_PPO = {"--max-new-tokens": "8"}
SHELLS = {"", "sh", "bash", "shell", "console", "zsh"}                # fence languages holding shell commands

# ---------------------------------------------------------------- reading the docs

@dataclass(frozen=True)
class Doc:
    file: str        # relative to the repository root
    where: str       # "README.md:53" or "nbs/40_cli.ipynb cell 3 line 13"
    text: str        # the command as the docs show it, continuations joined
    run: bool        # a command to run (a shell block) or a mention in running text (an inline code span)

def shell_commands(block: str) -> list[tuple[int, str]]:
    "(line, command) per `rlhf_nb ...` in a shell block: `\\` continuations joined, `$ ` and comments dropped, `&&` split."
    out, lines, i = [], block.splitlines(), 0
    while i < len(lines):
        start, line = i, lines[i]
        while line.rstrip().endswith("\\") and i + 1 < len(lines): i += 1; line = line.rstrip()[:-1] + " " + lines[i]
        line = re.sub(r"^\s*\$\s+", "", re.split(r"(?:^|\s)#", line)[0])
        out += [(start, " ".join(c.split())) for c in re.split(r"&&|;", line) if re.match(r"rlhf_nb\s", c.strip())]
        i += 1
    return out

_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)^[ \t]*```", re.M | re.S)

def markdown_commands(md: str) -> list[tuple[int, str, bool]]:
    "(line, command, fenced) for each `rlhf_nb ...` in a markdown text: fenced shell blocks, then inline code spans."
    found = []
    for m in _FENCE.finditer(md):
        if m.group(1).lower() in SHELLS:
            first = md[:m.start(2)].count("\n") + 1                     # the line after the opening fence
            found += [(first + k, c, True) for k, c in shell_commands(m.group(2))]
    prose = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), md)   # keeps line numbers
    found += [(prose[:m.start()].count("\n") + 1, " ".join(m.group(1).split()), False)
              for m in re.finditer(r"(?<!`)`(rlhf_nb\s[^`]+)`", prose)]
    return sorted(found)

def yaml_files(md: str) -> dict[str, str]:
    "name -> text of each fenced yaml block whose first line is `# NAME.yaml` (a config file the docs show)."
    out = {}
    for m in _FENCE.finditer(md):
        first = m.group(2).lstrip().split("\n", 1)[0]
        if m.group(1).lower() in ("yaml", "yml") and (name := re.match(r"#\s*([\w.-]+\.ya?ml)\b", first)): out[name.group(1)] = m.group(2)
    return out

def _doc_markdown(file: str) -> str:
    "README.md, or a notebook's markdown cells, as one text."
    if file.endswith(".md"): return (ROOT / file).read_text()
    return "\n\n".join("".join(c["source"]) for c in json.loads((ROOT / file).read_text())["cells"] if c["cell_type"] == "markdown")

def _required(sub: argparse.ArgumentParser) -> set[str]:
    "The options a complete command names: argparse's required ones, and a training command's (checked after its --config file)."
    from rlhf_nb.cli import REQUIRED
    training = set(REQUIRED.values()) if "--print-config" in sub._option_string_actions else set()
    return {a.option_strings[0] for a in sub._actions if a.required and a.option_strings} | training

@functools.cache
def _subcommands() -> dict[str, argparse.ArgumentParser]:
    from rlhf_nb.cli import parser
    return next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)).choices

def documented(root: Path = ROOT) -> list[Doc]:
    "Every `rlhf_nb ...` command and mention in README.md and the notebooks, in reading order."
    subs, docs = _subcommands(), []
    def add(file, where, cmd, fenced):
        words = cmd.split()
        complete = len(words) > 1 and words[1] in subs and _required(subs[words[1]]) <= {w.split("=")[0] for w in words}
        docs.append(Doc(file, where, cmd, fenced or complete))
    for line, cmd, fenced in markdown_commands((root / "README.md").read_text()): add("README.md", f"README.md:{line}", cmd, fenced)
    for nb in sorted((root / "nbs").glob("*.ipynb")):
        f = str(nb.relative_to(root))
        for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
            src = "".join(cell["source"])
            if cell["cell_type"] == "markdown":
                for line, cmd, fenced in markdown_commands(src): add(f, f"{f} cell {i} line {line}", cmd, fenced)
            elif cell["cell_type"] == "code":                          # `!rlhf_nb ...` shell escapes
                bang = "\n".join(l.strip()[1:] if l.strip().startswith("!") else "" for l in src.splitlines())
                for k, cmd in shell_commands(bang): add(f, f"{f} cell {i} line {k + 1}", cmd, True)
    return docs

DOCS = documented()
RUNS = [d for d in DOCS if d.run]
MENTIONS = [d for d in DOCS if not d.run]

def test_extraction():
    "The reader finds the commands: continuations, prompts, chains and inline spans, and the docs' own commands."
    md = ("Run `rlhf_nb demo --out d` or `rlhf_nb demo --quick`.\n\n```sh\n$ pip install x && rlhf_nb sft --model m \\\n"
          "    --dataset d.jsonl --output-dir o   # a comment\nrlhf_nb rm --help\n```\n\n```python\nrlhf_nb = 1\n```\n")
    assert markdown_commands(md) == [(1, "rlhf_nb demo --out d", False), (1, "rlhf_nb demo --quick", False),
                                     (4, "rlhf_nb sft --model m --dataset d.jsonl --output-dir o", True),
                                     (6, "rlhf_nb rm --help", True)]
    assert yaml_files("```yaml\n# run.yaml\nlr: 1\n```\n```yaml\nlr: 2\n```\n") == {"run.yaml": "# run.yaml\nlr: 1\n"}
    files = {d.file for d in RUNS}
    assert {"README.md", "nbs/40_cli.ipynb"} <= files, files
    assert {d.text.split()[1] for d in RUNS} >= {"sft", "rm", "demo"}, [d.text for d in RUNS]
    assert any(not d.run for d in DOCS)                                # `rlhf_nb demo --quick` in running text

# ---------------------------------------------------------------- stand-ins

REVIEWS = [f"{w} {n}.<br /><br />I {x} it." for w, n, x in
           zip(["Great", "Awful", "Fine", "Dull"] * 20, ["plot", "cast", "music", "ending"] * 20, ["loved", "hated", "liked", "left"] * 20)]

def _fit_to_end(lm, tok, texts: list[str], steps: int = 40):
    "A few AdamW steps on texts + EOS, so that the stand-in's samples end (the demo drops truncated pairs)."
    import torch
    rows = [tok(t).input_ids + [tok.eos_token_id] for t in texts]
    ids = torch.full((len(rows), max(map(len, rows))), tok.pad_token_id)                        # (N, T)
    for i, r in enumerate(rows): ids[i, :len(r)] = torch.tensor(r)
    mask = ids != tok.pad_token_id                                                              # (N, T)
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-3)
    for _ in range(steps):
        lm(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(~mask, -100)).loss.backward(); opt.step(); opt.zero_grad()
    return lm

@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> Path:
    "A tiny causal LM, a tiny two-class sentiment classifier and an IMDb-shaped `save_to_disk` dataset, in one folder."
    import datasets, torch, torch.nn as nn
    from transformers import LlamaForSequenceClassification
    from rlhf_nb.models import tiny_tokenizer, tiny_llama
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("standins")
    tok = tiny_tokenizer(REVIEWS + [r["prompt"] + r["chosen"] + r["rejected"] for r in _pairs])
    _fit_to_end(tiny_llama(tok), tok, REVIEWS[:40]).save_pretrained(d / "lm"); tok.save_pretrained(d / "lm")
    clf = tiny_llama(tok, hidden_size=32, cls=LlamaForSequenceClassification)
    clf.config.id2label, clf.config.label2id = {0: "NEGATIVE", 1: "POSITIVE"}, {"NEGATIVE": 0, "POSITIVE": 1}
    clf.config.num_labels = 2; clf.score = nn.Linear(32, 2, bias=False)
    clf.save_pretrained(d / "clf"); tok.save_pretrained(d / "clf")
    datasets.DatasetDict(train=datasets.Dataset.from_dict({"text": REVIEWS[:40]}),
                         test=datasets.Dataset.from_dict({"text": REVIEWS[40:]})).save_to_disk(str(d / "imdb"))
    assert set(HUB.values()) <= {p.name for p in d.iterdir()}
    return d

# ---------------------------------------------------------------- running

def _set(argv: list[str], flag: str, value: str | None) -> list[str]:
    "argv with `flag` given `value` (replacing `flag v` or `flag=v`); a bare switch when value is None."
    out, skip = [], False
    for w in argv:
        if skip: skip = False; continue
        if w == flag: skip = value is not None; continue
        if w.startswith(flag + "="): continue
        out.append(w)
    return out + [flag] + ([value] if value is not None else [])

def as_run(doc: Doc, standins: Path) -> list[str]:
    "The argv a documented command runs as here: hub ids swapped for stand-ins, sizes shortened to CI size."
    argv = shlex.split(doc.text)
    argv = [str(standins / HUB[w]) if w in HUB else w for w in argv]
    sub = _subcommands()[argv[1]] if argv[1] in _subcommands() else None
    opts = sub._option_string_actions if sub else {}
    if "--max-steps" in opts and "--help" not in argv:
        for flag, v in {**SHORT, **(SHORT_PPO if "--max-new-tokens" in opts else {})}.items(): argv = _set(argv, flag, v)
    if "--tiny" in opts:
        argv = [w for w in argv if w != "--quick"]
        if "--tiny" not in argv: argv.append("--tiny")
    return argv

@dataclass
class Result:
    argv: list[str]
    cwd: Path
    proc: subprocess.CompletedProcess
    failed_before: list[str]         # earlier commands of the same folder that failed (their outputs may be missing)

_done: dict[tuple, Result] = {}

def _chain(doc: Doc) -> tuple[Doc, ...]:
    "The training commands of doc's file up to and including doc (a demo stands alone): what it may depend on."
    if doc.text.split()[1] == "demo": return (doc,)
    return tuple(d for d in RUNS[:RUNS.index(doc) + 1] if d.file == doc.file and d.text.split()[1] != "demo")

def _fail(doc: Doc, r: Result, why: str):
    out = (r.proc.stdout[-1500:] + "\n" + r.proc.stderr[-3000:]).strip()
    hint = ("\n(a hub id? add a local stand-in to HUB in tests/test_documented_commands.py)"
            if re.search(r"offline|huggingface\.co", r.proc.stderr, re.I) else "")
    before = "".join(f"\n  after the failure of: {w}" for w in r.failed_before)
    pytest.fail(f"{doc.where}: `{doc.text}` {why}\n  ran as: {shlex.join(r.argv)}\n  in: {r.cwd}{before}\n{out}{hint}",
                pytrace=False)

def run_doc(doc: Doc, standins: Path, work: Path) -> Result:
    "Run doc in its file's folder after the commands before it, once per distinct sequence of commands."
    chain = _chain(doc)
    key = tuple(shlex.join(as_run(d, standins)) for d in chain)      # the same run shown twice runs once
    if key in _done: return _done[key]
    if len(chain) > 1:
        prev = run_doc(chain[-2], standins, work)
        cwd, failed = prev.cwd, prev.failed_before + ([f"`{chain[-2].text}` ({chain[-2].where})"] if prev.proc.returncode else [])
    else:
        cwd, failed = work / re.sub(r"\W+", "_", doc.where), []; cwd.mkdir(parents=True)
        for name, rows in DATA.items(): (cwd / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        for name, text in yaml_files(_doc_markdown(doc.file)).items(): (cwd / name).write_text(text)
    argv = as_run(doc, standins)
    for flag in ("--dataset", "--eval-dataset"):
        v = _opt(argv, flag)
        if v and re.search(r"\.(jsonl|json|parquet)$", v) and not (cwd / v).exists():
            pytest.fail(f"{doc.where}: `{doc.text}` names {v}: add its rows to DATA in tests/test_documented_commands.py",
                        pytrace=False)
    proc = subprocess.run(argv, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    _done[key] = Result(argv, cwd, proc, failed)
    return _done[key]

def _opt(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None

@pytest.fixture(scope="module")
def work(tmp_path_factory): return tmp_path_factory.mktemp("docs_commands")

@pytest.mark.parametrize("doc", RUNS, ids=[f"{d.where} {d.text.split()[1]}" for d in RUNS])
def test_documented_command_runs(doc, standins, work):
    r = run_doc(doc, standins, work)
    if r.proc.returncode != 0: _fail(doc, r, f"exited with {r.proc.returncode}")
    if "Traceback" in r.proc.stderr: _fail(doc, r, "printed a traceback")
    if "--help" in r.argv: return
    if (out := _opt(r.argv, "--output-dir")) is not None:            # a training command: metrics + final model
        out = r.cwd / out
        lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
        if not lines: _fail(doc, r, f"wrote no {out / 'metrics.jsonl'}")
        rows = [json.loads(l) for l in lines]
        if not all("step" in row and "loss" in row for row in rows): _fail(doc, r, f"metrics.jsonl lacks step/loss: {rows[0]}")
        lora = int(_opt(r.argv, "--lora-r") or 0) > 0
        final = out / "final" / ("adapter_config.json" if lora else "config.json")
        if not final.exists(): _fail(doc, r, f"wrote no {final}")
        try: summary = json.loads(r.proc.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError): _fail(doc, r, "printed no JSON summary as its last line")
        if "--eval-dataset" in r.argv and not any(k.startswith("eval/") for k in summary):
            _fail(doc, r, f"printed no eval/ metrics for --eval-dataset: {summary}")
    elif (out := _opt(r.argv, "--out")) is not None:                  # demo: the numbers and the report
        out = r.cwd / out
        for f in ("metrics.json", "report.html"):
            if not (out / f).exists(): _fail(doc, r, f"wrote no {out / f}")
        m = json.loads((out / "metrics.json").read_text())
        want = ({"sft", "grpo", "rloo", "examples"} if _opt(r.argv, "--task") == "arithmetic"
                else {"sft", "ppo", "dpo", "ipo", "kto", "reward_model"})
        if not want <= set(m): _fail(doc, r, f"metrics.json has only {sorted(m)}")

def test_mentions_name_real_commands_and_flags():
    "Commands quoted in running text (not run) name sub-commands and flags that exist."
    subs, bad = _subcommands(), []
    for d in MENTIONS:
        head = d.text.split(" --")[0].split()[1:]                      # `rlhf_nb sft | rm | dpo` -> sft, rm, dpo
        names = [w for w in head if w != "|" and not w.isupper()]     # COMMAND is a placeholder
        bad += [f"{d.where}: `{d.text}`: no sub-command {n!r}" for n in names if n not in subs]
        if names and names[0] in subs:
            flags = {w.split("=")[0] for w in d.text.split() if w.startswith("--")}
            bad += [f"{d.where}: `{d.text}`: `rlhf_nb {names[0]}` has no {f}" for f in sorted(flags)
                    if f not in subs[names[0]]._option_string_actions]
    assert not bad, "\n".join(bad)

def _reward_fn_specs() -> list[tuple[str, str]]:
    "(where, module:function) for every `--reward-fn X` in README.md and the notebooks' markdown."
    found = [("README.md", m.group(1)) for m in re.finditer(r"--reward-fn[ =]([\w.]+:\w+)", (ROOT / "README.md").read_text())]
    for nb in sorted((ROOT / "nbs").glob("*.ipynb")):
        for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
            if cell["cell_type"] == "markdown":
                found += [(f"nbs/{nb.name} cell {i}", m.group(1))
                          for m in re.finditer(r"--reward-fn[ =]([\w.]+:\w+)", "".join(cell["source"]))]
    return found

def test_documented_reward_fns_take_prompts_and_completions():
    "Each `--reward-fn module:function` the docs name exists and scores (prompts, completions) -> one float each."
    specs = _reward_fn_specs()
    assert specs, "the docs name no --reward-fn"
    for where, spec in specs:
        mod, fn = spec.split(":")
        f = getattr(importlib.import_module(mod), fn, None)
        assert f is not None, f"{where}: --reward-fn {spec}: {mod} has no {fn}"
        try: scores = f(["The film was", "I"], [" great fun.", " hated it."])
        except TypeError as e: pytest.fail(f"{where}: --reward-fn {spec} is not reward_fn(prompts, completions): {e}")
        assert len(scores) == 2 and all(isinstance(s, (int, float)) for s in scores), f"{where}: {spec} returned {scores}"
