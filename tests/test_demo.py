"`rlhf_nb demo` end to end, as a user runs it, in its CI-sized `--tiny` setting; then the report in a real browser."
import json, math, os, shutil, subprocess, sys, tempfile
from pathlib import Path
import pytest
from rlhf_nb.demo import METHODS                        # sft, bon, ppo, rloo, grpo, dpo, online_dpo, ipo, kto, simpo, orpo
from rlhf_nb.viz import method_label

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    r = subprocess.run(["rlhf_nb", "demo", "--out", str(out), "--tiny", "--quiet"], env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "reward model held-out accuracy" in r.stdout                      # the printed summary
    assert "KL mean ± CI95" in r.stdout and "truncated dropped" in r.stdout
    return out

def test_metrics_file(demo_dir):
    m = json.loads((demo_dir / "metrics.json").read_text())
    keys = {"oracle_reward", "oracle_reward_ci95", "proxy_reward", "proxy_reward_ci95", "kl_mean", "kl_std", "kl_ci95",
            "kl_median", "kl_p95", "eos_rate", "kl_flag", "n_samples", "seconds"}
    for method in METHODS:
        r = m[method]
        assert keys <= set(r), (method, keys - set(r))
        assert -1 <= r["oracle_reward"] <= 1 and 0 <= r["eos_rate"] <= 1
        assert r["kl_std"] >= 0 and r["kl_ci95"] >= 0 and r["kl_p95"] >= r["kl_median"]
        per_prompt = max(m["config"]["bon_ns"]) if method == "bon" else m["config"]["n_eval_samples"]
        assert r["n_samples"] == m["config"]["n_eval_prompts"] * per_prompt
        assert r["kl_flag"] == (r["kl_mean"] > m["config"]["kl_limit"] or r["kl_p95"] > 3 * m["config"]["kl_limit"])
    assert abs(m["sft"]["kl_mean"]) < 1e-4 and m["sft"]["kl_ci95"] < 1e-4    # the SFT policy against itself
    assert 0 <= m["reward_model"]["accuracy"] <= 1
    p = m["pairs"]                                                           # every prompt accounted for, truncations too
    assert p["pairs"] + p["ties"] + p["empty"] + p["truncated"] == p["prompts"] == m["config"]["n_pair_prompts"]
    assert "targets" not in m                                                # --tiny has none; --quick has QUICK_TARGETS
    c = m["config"]                                                          # the critic-free runs: one per β, against the RM
    assert [(s["method"], s["beta"]) for s in m["sweep"] if s["method"] in ("rloo", "grpo")] == \
        [("rloo", b) for b in c["rloo_betas"]] + [("grpo", b) for b in c["grpo_betas"]]
    assert m["rloo"]["beta"] == c["rloo_betas"][0] and m["grpo"]["beta"] == c["grpo_betas"][0]
    bon = [s for s in m["sweep"] if s["method"] == "bon"]                    # best-of-n: the whole curve, its exact KL
    assert [s["n"] for s in bon] == sorted(c["bon_ns"]) and bon[0]["kl_ci95"] == 0
    assert [round(s["kl_mean"], 12) for s in bon] == [round(math.log(n) - (n - 1) / n, 12) for n in sorted(c["bon_ns"])]
    for method, knob, values in (("online_dpo", "beta", c["online_betas"]), ("simpo", "lr", c["simpo_lrs"]), ("orpo", "lam", c["orpo_lams"])):
        assert [s[knob] for s in m["sweep"] if s["method"] == method] == list(values)
    online = demo_dir / f"online_dpo_{c['online_betas'][0]}"                # every round ran, metrics collected across them
    assert (online / f"round-{c['online_rounds'] - 1}").is_dir() and (online / "metrics.jsonl").exists()

def test_report_file(demo_dir):
    page = (demo_dir / "report.html").read_text()
    m = json.loads((demo_dir / "metrics.json").read_text())
    assert "KL mean ± 95% CI" in page and "KL p95" in page
    for method in ("dpo", "rloo", "grpo"):                                   # the mean, with its interval
        assert f"{m[method]['kl_mean']:.2f} ± {m[method]['kl_ci95']:.2f}" in page
    assert "<h3>RLOO</h3>" in page and "<h3>GRPO</h3>" in page              # their example completions
    assert f"{m['pairs']['truncated']:,} with a completion cut at the token budget" in page

def test_quick_config_has_the_targets():
    from rlhf_nb.demo import DemoConfig, QUICK_TARGETS
    q = DemoConfig.quick(); t = q.targets
    assert set(t["reward_gain"]) == set(METHODS) - {"sft"}                  # every method has a reward target
    assert {k: t["reward_gain"][k] for k in ("ppo", "rloo", "grpo", "dpo", "ipo", "kto")} == \
        {"ppo": 0.5, "rloo": 0.5, "grpo": 0.45, "dpo": 0.4, "ipo": 0.4, "kto": 0.35}
    assert set(t["kl_mean_max"]) == set(METHODS) - {"sft", "bon"}           # every trained method has a KL cap (best-of-n's KL is exact)
    assert {k: t["kl_mean_max"][k] for k in ("ppo", "rloo", "grpo", "dpo")} == {"ppo": 6.0, "rloo": 5.0, "grpo": 4.0, "dpo": 5.0}
    assert t["rm_accuracy"] == 0.85 and t == QUICK_TARGETS
    assert (q.pref_lr, DemoConfig().pref_lr, q.simpo_lrs) == (3e-4, 5e-4, (1.5e-4,))   # the quick run's steadier preference step
    assert t is not QUICK_TARGETS                                            # a copy: changing a run's targets leaves the constant
    assert (len(q.rloo_betas), len(q.grpo_betas)) == (1, 1) and (len(DemoConfig().rloo_betas), len(DemoConfig().grpo_betas)) == (3, 3)

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
    assert "mean KL(π ‖ π_SFT)" in dom                                        # the x axis: the mean, not the median
    assert "main-svg" in dom                                                  # plotly rendered an SVG
    for m in METHODS: assert f"<td>{method_label(m)}</td>" in dom
    assert "proxy: the reward model" in dom                                  # the second panel
    png = demo_dir / "shot.png"
    _chromium(f"--screenshot={png}", "--window-size=1200,900", page)
    from PIL import Image
    colors = Image.open(png).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50, "the screenshot is blank"
