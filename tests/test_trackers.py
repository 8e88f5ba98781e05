"""Experiment trackers for real: TensorBoard, Weights & Biases (offline) and Trackio, started by `start_trackers`, and
everything they wrote read back from disk — first driven through accelerate directly, then through the training loop."""
import json, os, re, shutil, struct, tempfile, time
from pathlib import Path
import pytest

# Trackio reads TRACKIO_DIR once, when it is first imported: point it at a private folder before anything imports it.
TRACKIO_DIR = Path(tempfile.mkdtemp(prefix="rlhf_nb-trackio-"))
os.environ["TRACKIO_DIR"] = str(TRACKIO_DIR)

from accelerate import Accelerator
from rlhf_nb.models import tiny_tokenizer, tiny_llama
from rlhf_nb.train import TrainConfig
from rlhf_nb.sft import sft
from rlhf_nb.record import run_record, start_trackers, log_table, tracker_config, markdown_table

COLUMNS = ["step", "prompt", "completion"]
TABLE = [[2, "The film was", " good | fun"], [2, "The plot", " was\nthin"]]
LOSSES = [(1, 0.6931), (2, 0.5), (3, 0.25)]
ROWS = [{"prompt": f"Film {i} was", "completion": f" {w} and fun."} for i, w in enumerate(["good", "great", "lovely", "fine"] * 2)]


@pytest.fixture(scope="module", autouse=True)
def _clean_trackio_dir():
    yield
    shutil.rmtree(TRACKIO_DIR, ignore_errors=True)


def need(module: str):
    return pytest.importorskip(module, reason=f"{module} is not installed (pip install {module}); its tracker test is skipped")


def drive(tmp_path, log_with: str, run_name: str = "r1") -> tuple[TrainConfig, dict]:
    "Start `log_with` through `start_trackers`, log LOSSES and TABLE, end the run; returns the config and the record."
    cfg = TrainConfig(output_dir=str(tmp_path / "out"), log_with=log_with, run_name=run_name, project_name="rlhf_nb-test", lr=3e-5)
    rec = run_record(cfg, objective="dpo")
    acc = Accelerator(log_with=[log_with], project_dir=cfg.output_dir)
    start_trackers(acc, cfg, rec)
    for step, loss in LOSSES: acc.log({"loss": loss}, step=step)
    log_table(acc, "samples", COLUMNS, TABLE, step=3)
    acc.end_training()
    return cfg, rec


def sft_run(tmp_path, log_with: str):
    "A real 3-step SFT run with the tracker on, sampling at the last step; returns (metrics.jsonl rows, samples.jsonl rows)."
    tok = tiny_tokenizer()
    out = tmp_path / "sft"
    sft(tiny_llama(tok), tok, ROWS, TrainConfig(output_dir=str(out), max_steps=3, batch_size=4, log_with=log_with, run_name="r1",
                                                progress=False, sample_every=3, num_samples=2, sample_max_new_tokens=6))
    read = lambda f: [json.loads(l) for l in (out / f).read_text().splitlines()]
    return read("metrics.jsonl"), read("samples.jsonl")


# --- TensorBoard -----------------------------------------------------------------------------------------------------

def tb_events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    assert list(folder.glob("events.out.tfevents.*")), f"no event file in {folder}"
    return EventAccumulator(str(folder)).Reload()


def f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]             # TensorBoard stores scalars as float32


def test_tensorboard(tmp_path):
    need("tensorboard")
    cfg, rec = drive(tmp_path, "tensorboard")
    run_dir = tmp_path / "out" / "tensorboard" / "r1"                 # the run's name is its folder
    ea = tb_events(run_dir)
    assert [(e.step, e.value) for e in ea.Scalars("loss")] == [(s, f32(v)) for s, v in LOSSES]
    text = ea.Tensors("samples/text_summary")
    assert [t.step for t in text] == [3]
    assert text[0].tensor_proto.string_val[0].decode() == markdown_table(COLUMNS, TABLE)
    import yaml                                                        # accelerate stores the config beside the events
    (hp,) = run_dir.glob("*/hparams.yml")
    stored = yaml.safe_load(hp.read_text())
    assert stored == tracker_config(rec) and stored["train/lr"] == 3e-5 and stored["objective"] == "dpo"


def test_tensorboard_through_the_loop(tmp_path):
    need("tensorboard")
    metrics, samples = sft_run(tmp_path, "tensorboard")
    ea = tb_events(tmp_path / "sft" / "tensorboard" / "r1")
    assert [(e.step, e.value) for e in ea.Scalars("loss")] == [(m["step"], f32(m["loss"])) for m in metrics]
    assert [e.step for e in ea.Scalars("lr")] == [1, 2, 3]
    (table,) = ea.Tensors("samples/text_summary")
    assert table.step == 3 and table.tensor_proto.string_val[0].decode() == \
        markdown_table(COLUMNS, [[s["step"], s["prompt"], s["completion"]] for s in samples])


# --- Weights & Biases, offline ---------------------------------------------------------------------------------------

def wandb_records(path: Path) -> list:
    """The records of a `.wandb` file: wandb's own `Record` protobufs in LevelDB's log framing — a 7-byte file header
    (":W&B", magic, version), then 32 KiB blocks of chunks, each a 7-byte header (checksum, length, type: 1 = a whole
    record, 2/3/4 = its first/middle/last piece); a block's last < 7 bytes are padding."""
    from wandb.proto import wandb_internal_pb2 as pb
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, out, buf = 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7: pos += left; continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if n == 0 and kind == 0: pos += left; continue                  # zero padding to the block's end
        if pos + 7 + n > len(data): break                               # a chunk still being written: read it next time
        buf += data[pos + 7:pos + 7 + n]; pos += 7 + n
        if kind in (1, 4):
            r = pb.Record(); r.ParseFromString(buf); out.append(r); buf = b""
    return out


def wandb_run(wandb_dir: Path):
    "(run record, {step: {key: value}} history, config) of the one offline run under `wandb_dir`."
    (run_dir,) = (wandb_dir / "wandb").glob("offline-run-*")
    (log,) = run_dir.glob("run-*.wandb")
    # wandb's service process writes the log; on a loaded machine the file can lag `finish()` by a moment
    for _ in range(120):
        recs = wandb_records(log)
        if any(r.WhichOneof("record_type") == "exit" for r in recs): break
        time.sleep(0.5)
    run = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
    history = {}
    for r in recs:
        if r.WhichOneof("record_type") == "history":
            row = {}
            for i in r.history.item:                                   # a table's fields come as nested keys
                *outer, last = [i.key] if i.key else list(i.nested_key)
                d = row
                for k in outer: d = d.setdefault(k, {})
                d[last] = json.loads(i.value_json)
            history.setdefault(row["_step"], {}).update(row)
    config = {}
    for r in recs:
        if r.WhichOneof("record_type") == "config":
            config.update({i.key: json.loads(i.value_json) for i in r.config.update})
    return run_dir, run, history, config


@pytest.fixture
def wandb_offline(monkeypatch):
    need("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline"); monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true"); monkeypatch.delenv("WANDB_DIR", raising=False)


def wandb_table(run_dir: Path, entry: dict) -> dict:
    "A logged table's JSON file, from its history entry."
    assert entry["_type"] == "table-file"
    return json.loads((run_dir / "files" / entry["path"]).read_text())


def test_wandb_offline(tmp_path, monkeypatch, wandb_offline):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    cfg, rec = drive(tmp_path, "wandb", run_name="first-run")
    run_dir, run, history, config = wandb_run(tmp_path / "wb")
    assert (run.display_name, run.project) == ("first-run", "rlhf_nb-test")
    assert {s: h["loss"] for s, h in history.items() if "loss" in h} == dict(LOSSES)
    assert wandb_table(run_dir, history[3]["samples"]) == {"columns": COLUMNS, "data": TABLE}
    assert config["train/lr"] == 3e-5 and config["objective"] == "dpo"
    assert {k: config.get(k) for k in tracker_config(rec)} == tracker_config(rec)


def test_wandb_writes_into_output_dir_without_wandb_dir(tmp_path, wandb_offline):
    drive(tmp_path, "wandb")
    _, run, _, _ = wandb_run(tmp_path / "out")                          # output_dir/wandb/offline-run-*
    assert run.display_name == "r1"


def test_wandb_through_the_loop(tmp_path, monkeypatch, wandb_offline):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    metrics, samples = sft_run(tmp_path, "wandb")
    run_dir, run, history, _ = wandb_run(tmp_path / "wb")
    assert (run.display_name, run.project) == ("r1", "rlhf_nb")
    assert [(s, h["loss"]) for s, h in sorted(history.items())] == [(m["step"], m["loss"]) for m in metrics]
    assert wandb_table(run_dir, history[3]["samples"])["data"] == [[s["step"], s["prompt"], s["completion"]] for s in samples]


# --- Trackio ---------------------------------------------------------------------------------------------------------

def trackio_logs(project: str, run: str):
    import trackio.utils
    from trackio.sqlite_storage import SQLiteStorage
    assert trackio.utils.TRACKIO_DIR == TRACKIO_DIR, "trackio was imported before this module set TRACKIO_DIR"
    assert run in SQLiteStorage.get_runs(project)
    return SQLiteStorage.get_logs(project, run), SQLiteStorage.get_run_config(project, run)


def test_trackio(tmp_path):
    need("trackio")
    cfg, rec = drive(tmp_path, "trackio", run_name="first-run")
    logs, config = trackio_logs("rlhf_nb-test", "first-run")
    assert [(l["step"], l["loss"]) for l in logs if "loss" in l] == LOSSES
    (table,) = [l for l in logs if "samples" in l]
    assert table["step"] == 3 and table["samples"]["_type"] == "trackio.table"
    assert table["samples"]["_value"] == [dict(zip(COLUMNS, r)) for r in TABLE]
    assert config["train/lr"] == 3e-5 and config["objective"] == "dpo"
    assert {k: config.get(k) for k in tracker_config(rec)} == tracker_config(rec)


def test_trackio_through_the_loop(tmp_path):
    need("trackio")
    metrics, samples = sft_run(tmp_path, "trackio")
    logs, _ = trackio_logs("rlhf_nb", "r1")
    assert [(l["step"], l["loss"]) for l in logs if "loss" in l] == [(m["step"], m["loss"]) for m in metrics]
    (table,) = [l for l in logs if "samples" in l]
    assert table["samples"]["_value"] == [{k: s[k] for k in COLUMNS} for s in samples]


# --- errors ----------------------------------------------------------------------------------------------------------

def test_a_tracker_that_is_not_installed_is_an_error(tmp_path):
    need("tensorboard")
    import importlib.util
    absent = [n for n in ("comet_ml", "aim", "clearml", "dvclive", "swanlab", "mlflow") if importlib.util.find_spec(n) is None]
    if not absent: pytest.skip("every accelerate tracker is installed here: none to miss")
    cfg = TrainConfig(output_dir=str(tmp_path), log_with=f"tensorboard, {absent[0]}")
    acc = Accelerator(log_with=["tensorboard", absent[0]], project_dir=str(tmp_path))    # accelerate drops it with a log line
    pip = {"comet_ml": "comet-ml"}.get(absent[0], absent[0])
    with pytest.raises(ImportError, match=re.escape(f"{absent[0]} is not installed; pip install {pip}")):
        start_trackers(acc, cfg, run_record(cfg))
