"`rlhf_nb demo` end to end, as a user runs it, in its CI-sized `--tiny` setting; then the report in a real browser."
import json, os, shutil, subprocess, sys, tempfile
from pathlib import Path
import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    r = subprocess.run(["rlhf_nb", "demo", "--out", str(out), "--tiny", "--quiet"], env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "reward model held-out accuracy" in r.stdout                      # the printed summary
    return out

def test_metrics_file(demo_dir):
    m = json.loads((demo_dir / "metrics.json").read_text())
    for method in ("sft", "ppo", "dpo", "ipo", "kto"):
        assert {"oracle_reward", "kl_mean", "kl_median", "eos_rate", "seconds"} <= set(m[method]), method
        assert -1 <= m[method]["oracle_reward"] <= 1 and 0 <= m[method]["eos_rate"] <= 1
    assert abs(m["sft"]["kl_mean"]) < 1e-4                                   # the SFT policy against itself
    assert 0 <= m["reward_model"]["accuracy"] <= 1

def _chromium(*args):
    prof = tempfile.mkdtemp()
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={prof}",
                           "--virtual-time-budget=5000", *args], capture_output=True, text=True, timeout=120)

@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_report_in_a_browser(demo_dir):
    page = (demo_dir / "report.html").as_uri()
    dom = _chromium("--dump-dom", page).stdout
    assert "Controlled sentiment generation" in dom and "Reward-model held-out" in dom
    assert "Oracle reward vs KL" in dom                                       # the figure's title, drawn by plotly.js
    assert "main-svg" in dom                                                  # plotly rendered an SVG
    for m in ("SFT", "PPO", "DPO", "IPO", "KTO"): assert f"<td>{m}</td>" in dom
    png = demo_dir / "shot.png"
    _chromium(f"--screenshot={png}", "--window-size=1200,900", page)
    from PIL import Image
    colors = Image.open(png).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50, "the screenshot is blank"
