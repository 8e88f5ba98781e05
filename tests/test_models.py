"QLoRA end to end through the training loop, and the error a Python without bitsandbytes gives (both need a process of their own)."
import json, os, subprocess, sys
from pathlib import Path
import pytest, torch

ROOT = Path(__file__).resolve().parents[1]

def _save_tiny(folder: Path) -> Path:
    from rlhf_nb.models import tiny_tokenizer, tiny_llama
    tok = tiny_tokenizer(); tiny_llama(tok).save_pretrained(folder); tok.save_pretrained(folder)
    return folder

def _site_without(tmp_path: Path, dist: str) -> Path:
    "A copy (by symlinks) of this Python's site-packages lacking every entry of `dist`: an environment where it is not installed."
    site = Path(torch.__file__).resolve().parents[1]
    out = tmp_path / "site"; out.mkdir()
    for entry in site.iterdir():
        if not entry.name.lower().startswith(dist): (out / entry.name).symlink_to(entry)
    return out

def test_qlora_sft_trains_adapters_on_a_4bit_base(tmp_path):
    bnb = pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes: pip install 'bitsandbytes>=0.46.1'")
    from peft import PeftModel
    from rlhf_nb.models import ModelConfig, load_policy, load_causal_lm, load_tokenizer, is_peft
    from rlhf_nb.sft import sft
    from rlhf_nb.train import TrainConfig
    base = _save_tiny(tmp_path / "base")
    mc = ModelConfig(model=str(base), lora_r=8, load_in_4bit=True, gradient_checkpointing=True)
    model, tok = load_policy(mc)
    layers = [m for m in model.modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A")]
    assert layers and all(isinstance(m.base_layer, bnb.nn.Linear4bit) for m in layers)
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad and p.is_floating_point()}
    rows = [{"prompt": "Review: ", "completion": "The movie was good and the actors were great."}] * 8
    trainer = sft(model, tok, rows, TrainConfig(output_dir=str(tmp_path / "run"), max_steps=12, batch_size=4, lr=1e-2,
                                                schedule="constant", progress=False))
    losses = [h["loss"] for h in trainer.history if "loss" in h]
    assert len(losses) == 12 and losses[-1] < losses[0] - 0.5, losses
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)   # the base did not move
    final = tmp_path / "run" / "final"
    assert (final / "adapter_config.json").exists() and not (final / "model.safetensors").exists()
    ids = tok(["Review: The movie was good"], return_tensors="pt")
    back = PeftModel.from_pretrained(load_causal_lm(str(base), tokenizer=load_tokenizer(str(base)), load_in_4bit=True), str(final)).eval()
    trained = trainer.model.eval()
    lora = lambda m: {n: p.detach() for n, p in m.state_dict().items() if "lora_" in n}
    assert lora(back).keys() == lora(trained).keys()
    assert all(torch.equal(lora(back)[n], lora(trained)[n]) for n in lora(trained))   # the adapter's weights, exactly
    with torch.no_grad():
        on, again = trained(**ids).logits, back(**ids).logits
        with trained.disable_adapter(): off = trained(**ids).logits
    gap, effect = (again - on).abs().max().item(), (off - on).abs().max().item()
    # 4-bit CPU matmuls (bitsandbytes 0.50) are not bit-reproducible across loads and thread counts (gaps of 1e-3 to
    # 6e-3 seen under load); the reloaded model must be the trained one, not the base
    print(f"gap {gap:.1e} effect {effect:.3f}")
    assert gap < 0.05 * effect, (gap, effect)
    again, _ = load_policy(ModelConfig(model=str(final), lora_r=4, load_in_4bit=True))   # the next stage: merged, new adapters
    assert is_peft(again) and not any(p.requires_grad for n, p in again.named_parameters() if "lora_" not in n)

def test_load_in_4bit_without_bitsandbytes_says_how_to_install(tmp_path):
    base = _save_tiny(tmp_path / "base")
    code = ("from rlhf_nb.models import ModelConfig, load_policy\n"
            f"load_policy(ModelConfig(model={str(base)!r}, lora_r=4, load_in_4bit=True))")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{_site_without(tmp_path, 'bitsandbytes')}", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: load_in_4bit=True (QLoRA) needs bitsandbytes, which is not installed"), r.stderr[-2000:]
    assert "pip install -U 'bitsandbytes>=0.46.1'" in last and "load_in_4bit=False" in last

def test_the_environment_without_bitsandbytes_is_otherwise_whole(tmp_path):
    "The same stripped environment loads a LoRA policy: the test above fails for the reason it names, not a broken setup."
    base = _save_tiny(tmp_path / "base")
    code = ("import importlib.util; assert importlib.util.find_spec('bitsandbytes') is None\n"
            "from rlhf_nb.models import ModelConfig, load_policy\n"
            f"m, t = load_policy(ModelConfig(model={str(base)!r}, lora_r=4)); print('ok', type(m).__name__)")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{_site_without(tmp_path, 'bitsandbytes')}", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "ok PeftModel" in r.stdout, r.stderr[-2000:]
