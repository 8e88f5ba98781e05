"""Precomputed reference log-probs as a user meets them: the cache records the data, the model and the reduction it
was made for and refuses any other; KTO precomputes its reference (rows and mismatched pairs) and trains as it does
without; `rlhf_nb sft --from-preferences` trains on the responses of preference pairs. Through the command line, on
one process and on two (what the notebooks 14_dpo, 16_kto and 10_sft cannot show)."""
import copy, json, os, subprocess, sys
from pathlib import Path
import pytest
import torch
from rlhf_nb.models import tiny_tokenizer, tiny_llama, add_lora

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
GOOD, BAD = ["good", "great", "fun", "lovely"], ["bad", "dull", "weak", "awful"]
ROWS = [{"prompt": f"Film {i} was", "chosen": f" {GOOD[i % 4]} and {'really ' * (i % 3)}{GOOD[(i + 1) % 4]}.",
         "rejected": f" {BAD[i % 4]}."} for i in range(20)]
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    "Two saved tiny models with one config and other weights, and a preference-only .jsonl file."
    d = tmp_path_factory.mktemp("refcache")
    tok = tiny_tokenizer()
    for name, seed in (("tiny", 0), ("other", 1)):
        tiny_llama(tok, seed=seed).save_pretrained(d / name); tok.save_pretrained(d / name)
    (d / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return d


def cli(*args, procs: int = 1, port: int = 29561, check: bool = True):
    "`rlhf_nb ...` (as `python -m rlhf_nb.cli`) on one process, or on `procs` under torchrun."
    launch = [sys.executable, "-m", "rlhf_nb.cli"] if procs == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port", str(port), "-m", "rlhf_nb.cli"]
    return subprocess.run([*launch, *map(str, args), "--quiet"], env=ENV, timeout=600, capture_output=True, text=True, check=check)


def metrics(out: Path, key: str) -> list[float]:
    return [json.loads(l)[key] for l in (out / "metrics.jsonl").read_text().splitlines()]


def kto_args(files, out, *extra):
    return ["kto", "--model", files / "tiny", "--dataset", files / "prefs.jsonl", "--output-dir", out, "--max-steps", 6,
            "--lr", 5e-3, "--max-length", 32, "--beta", 0.5, *extra]


def test_kto_precompute_ref_trains_as_in_step_and_reuses_its_cache(files, tmp_path):
    cache = tmp_path / "cache"
    cli(*kto_args(files, tmp_path / "in_step", "--batch-size", 4, "--grad-accum", 2))
    cli(*kto_args(files, tmp_path / "pre", "--batch-size", 4, "--grad-accum", 2, "--precompute-ref", "--ref-cache", cache))
    note = cache / "rlhf_nb_reference.json"
    record, stamp = json.loads(note.read_text()), note.stat().st_mtime_ns
    assert record["rows"] == 40 and record["reduction"] == "sum"       # 20 pairs split into 40 labelled rows
    assert record["model"]["name_or_path"] == str((files / "tiny").resolve())
    cli(*kto_args(files, tmp_path / "again", "--batch-size", 4, "--grad-accum", 2, "--precompute-ref", "--ref-cache", cache))
    assert note.stat().st_mtime_ns == stamp                             # loaded, not computed and written again
    for key in ("loss", "kl"):
        assert metrics(tmp_path / "pre", key) == pytest.approx(metrics(tmp_path / "in_step", key), abs=1e-5)
        assert metrics(tmp_path / "again", key) == metrics(tmp_path / "pre", key)
    assert max(metrics(tmp_path / "in_step", "kl")) > 0                 # ẑ₀ left 0: the mismatched log-probs count


def test_kto_precompute_ref_on_two_processes(files, tmp_path):
    # the main process computes and writes the cache, the other loads it (its own fingerprint of the same data and
    # model matches); 2 × 4 rows per step on two processes is the run of 8 rows on one
    cli(*kto_args(files, tmp_path / "one", "--batch-size", 8, "--precompute-ref"))
    cache = tmp_path / "cache2"
    cli(*kto_args(files, tmp_path / "two", "--batch-size", 4, "--precompute-ref", "--ref-cache", cache), procs=2, port=29562)
    assert (cache / "rlhf_nb_reference.json").exists() and not (tmp_path / "cache2.tmp").exists()
    cli(*kto_args(files, tmp_path / "two_again", "--batch-size", 4, "--precompute-ref", "--ref-cache", cache), procs=2, port=29563)
    for key in ("loss", "kl"):
        assert metrics(tmp_path / "two", key) == pytest.approx(metrics(tmp_path / "one", key), rel=1e-4, abs=1e-6)
        assert metrics(tmp_path / "two_again", key) == metrics(tmp_path / "two", key)


def test_dpo_cache_refuses_another_model_or_max_length(files, tmp_path):
    cache = tmp_path / "cache"
    common = ["dpo", "--dataset", files / "prefs.jsonl", "--max-steps", 2, "--batch-size", 4, "--precompute-ref", "--ref-cache", cache]
    cli(*common, "--model", files / "tiny", "--output-dir", tmp_path / "a", "--max-length", 32)
    r = cli(*common, "--model", files / "other", "--output-dir", tmp_path / "b", "--max-length", 32, check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "model differs (name_or_path" in r.stderr and "weights)" in r.stderr and "delete the folder" in r.stderr
    r = cli(*common, "--model", files / "tiny", "--output-dir", tmp_path / "c", "--max-length", 8, check=False)
    assert r.returncode == 1 and "data differ" in r.stderr and "model differs" not in r.stderr, r.stderr


def test_sft_from_preferences(files, tmp_path):
    common = ["sft", "--model", files / "tiny", "--dataset", files / "prefs.jsonl", "--batch-size", 4, "--max-length", 32]
    r = cli(*common, "--output-dir", tmp_path / "x", check=False)
    assert r.returncode == 1 and "--from-preferences chosen|both" in r.stderr and "Traceback" not in r.stderr, r.stderr
    steps = {}
    for which in ("chosen", "both"):                                    # one epoch: 20 rows, or 40
        r = cli(*common, "--output-dir", tmp_path / which, "--from-preferences", which, "--eval-dataset", files / "prefs.jsonl")
        steps[which] = json.loads(r.stdout.strip().splitlines()[-1])["steps"]
        assert json.loads((tmp_path / which / "eval.json").read_text())["eval/nll"] > 0
        assert (tmp_path / which / "final" / "config.json").exists()
    assert steps == {"chosen": 5, "both": 10}


def test_lora_policy_kto_precomputed_equals_adapters_off(tmp_path):
    # the reference of a LoRA policy is its base with the adapters off; precomputed, it is the same numbers
    from rlhf_nb.train import TrainConfig
    from rlhf_nb.kto import kto, KTOConfig
    tok = tiny_tokenizer([r["prompt"] + r["chosen"] + r["rejected"] for r in ROWS])
    torch.manual_seed(0)
    start = add_lora(tiny_llama(tok), r=4)
    def run(name, **kw):
        c = TrainConfig(output_dir=str(tmp_path / name), max_steps=4, batch_size=8, lr=1e-2, progress=False, save_final=False)
        h = kto(copy.deepcopy(start), tok, ROWS, c, KTOConfig(beta=0.5, max_length=32, **kw)).history
        return [x["loss"] for x in h], [x["kl"] for x in h]
    off, pre = run("off"), run("pre", precompute_ref=True)
    assert pre[0] == pytest.approx(off[0], abs=1e-5) and pre[1] == pytest.approx(off[1], abs=1e-5)
    assert off[0][-1] < off[0][0] - 1e-3                                # the adapters trained


def test_data_fingerprint_reads_the_rows_not_the_storage(tmp_path):
    import datasets
    from rlhf_nb.data import tokenize_preferences
    from rlhf_nb.dpo import data_fingerprint
    tok = tiny_tokenizer()
    ds, _ = tokenize_preferences(ROWS, tok, max_length=32)
    picked = ds.select(range(5, 15))                                    # an indices mapping over the same table
    copied = datasets.Dataset.from_list(list(picked))                   # the same rows, stored anew
    ds.save_to_disk(str(tmp_path / "saved"))
    assert data_fingerprint(picked) == data_fingerprint(copied)
    assert data_fingerprint(datasets.load_from_disk(str(tmp_path / "saved"))) == data_fingerprint(ds)
    assert data_fingerprint(picked) != data_fingerprint(ds.select(range(6, 16)))
