"""The offline docs site: `python tools/docs.py` builds it (nbdev's processing of every notebook, executed, rendered by
nbconvert) and headless Chromium opens the pages: the text a reader needs is in the DOM after the scripts ran (a
derivation heading, an API signature, MathJax's rendered math, a drawn plotly figure), and a screenshot is not blank.

The build runs once per session and takes minutes: it executes every notebook, as `nbdev_test` does. To look at an
existing build instead: `DOCS_SITE=_site pytest tests/test_docs.py` after `python tools/docs.py`; to build only some
pages: `DOCS_PAGES="00_core 12_kl" pytest ...` (the pages the browser tests open are added). The browser tests skip only
where no Chromium is installed; CI installs it (.ci/run)."""
import os, re, shutil, subprocess, sys
from pathlib import Path
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"
CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "chrome") if shutil.which(b)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH: `apt-get install -y chromium` (CI's .ci/run does)")

def sidebar_files():
    def walk(items):
        for it in items:
            if isinstance(it, str): yield it
            else: yield from walk(it.get("contents") or [])
    return list(walk(yaml.safe_load((NBS / "sidebar.yml").read_text())["website"]["sidebar"]["contents"]))

def test_sidebar_lists_every_notebook_once():
    listed, present = sidebar_files(), sorted(p.name for p in NBS.glob("*.ipynb"))
    assert len(listed) == len(set(listed)), f"listed twice in nbs/sidebar.yml: {sorted({f for f in listed if listed.count(f) > 1})}"
    assert sorted(listed) == present, (f"nbs/sidebar.yml and nbs/ differ: missing from the sidebar "
                                       f"{sorted(set(present) - set(listed))}, not in nbs/ {sorted(set(listed) - set(present))}")
    assert listed[0] == "index.ipynb"

OPENED = ["index", "00_core", "14_dpo", "30_viz"]                      # the notebooks of the pages opened below

@pytest.fixture(scope="session")
def site(tmp_path_factory):
    "Build the site once, into a temporary folder (the user's _site/ is left alone): (folder, notebooks built, log)."
    if os.environ.get("DOCS_SITE"): return Path(os.environ["DOCS_SITE"]).resolve(), [], ""
    out, names = tmp_path_factory.mktemp("site"), os.environ.get("DOCS_PAGES", "").split()
    if names: names = sorted(set(names) | set(OPENED))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "docs.py"), *names, "--out", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, f"docs build failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    print(r.stdout)
    return out, names or [Path(f).stem for f in sidebar_files()], r.stdout

def test_build_makes_a_page_per_notebook(site):
    out, built, log = site
    from nbdev.doclinks import _nbpath2html
    pages = [_nbpath2html(Path(f)).name for f in sidebar_files()]
    for p in [_nbpath2html(Path(n + ".ipynb")).name for n in built]:
        assert (out / p).is_file(), f"no page {p}; built: {sorted(x.name for x in out.glob('*.html'))}"
    if log: assert re.search(rf"built {len(built)} pages in \d+ s", log), log
    index = (out / "index.html").read_text()
    for p in pages: assert f'href="{p}"' in index, f"the sidebar has no link to {p}"       # navigation between pages
    assert 'class="next" href="notation.html"' in index                                     # and previous/next
    assert (out / "static" / "mathjax" / "MathJax.js").is_file() and (out / "static" / "plotly.min.js").is_file()

def test_pages_are_self_contained(site):
    "Nothing is fetched from the network, the files pages load are in the site, links between pages stay in it."
    out, built, _ = site
    full = not os.environ.get("DOCS_PAGES")
    for page in out.glob("*.html"):
        text = page.read_text()
        remote = re.findall(r'<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)="(?:https?:)?//[^"]+"', text)
        assert not remote, f"{page.name} fetches {remote[:3]}"
        assert 'href="https://rlhf-nb.github.io/rlhf_nb/' not in text, f"{page.name} links to the published site, not to its pages"
        local = re.findall(r'<(?:script|img)\b[^>]*\bsrc="([^":#?]+)', text) + re.findall(r'<link\b[^>]*\bhref="([^":#?]+)', text)
        if full: local += re.findall(r'<a\b[^>]*\bhref="([^":#?]+\.html)', text)
        nb_links = re.findall(r'<a\b[^>]*\bhref="([^":#?/]+\.ipynb)', text)            # a notebook link not made a page link
        assert not nb_links, f"{page.name} links to notebooks, not their pages: {sorted(set(nb_links))[:5]}"
        missing = sorted({u for u in local if not (out / u).exists()})
        assert not missing, f"{page.name} points to files the site lacks: {missing}"

def chromium(*args, url, tmp):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp}", "--virtual-time-budget=15000", "--window-size=1280,900", *args, url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout

@pytest.fixture(scope="session")
def dom(site, tmp_path_factory):
    "The DOM of a page after its scripts ran (MathJax typeset, plotly drew), as Chromium's --dump-dom prints it."
    out, cache = site[0], {}
    def get(page):
        if page not in cache:
            cache[page] = chromium("--dump-dom", url=(out / page).as_uri(), tmp=tmp_path_factory.mktemp("chromium"))
        return cache[page]
    return get

@needs_chromium
def test_derivation_heading_and_rendered_math(dom):
    html = dom("dpo.html")
    assert re.search(r"<h2[^>]*>[^<]*the DPO loss", html), "no derivation heading 'Step …: the DPO loss' on dpo.html"
    # MathJax 2 replaced the TeX with its HTML-CSS output: typeset math and no raw $$ left in the text.
    assert html.count('class="MathJax_Display"') >= 3 and 'class="MathJax"' in html, "MathJax did not render"
    assert 'class="MathJax_Error"' not in html and "Math Processing Error" not in html
    assert "$$" not in re.sub(r"<script.*?</script>", "", html, flags=re.S)

@needs_chromium
def test_api_signature(dom):
    html = dom("core.html")
    assert re.search(r'<h3 id="sequence_logps"[^>]*>sequence_logps', html), "no show_doc heading for sequence_logps"
    text = re.sub(r"<[^>]+>", "", html)                                  # the signature is syntax-highlighted
    sig = re.search(r"def sequence_logps\((.*?)\)-&gt;", text, re.S)
    assert sig, "no signature for sequence_logps"
    assert re.findall(r"(\w+):", re.sub(r"#.*", "", sig[1])) == ["logits", "labels", "average", "ignore_index"], sig[1]

@needs_chromium
def test_plotly_figure_drawn(dom):
    html = dom("viz.html")
    assert "plotly-graph-div" in html, "no plotly figure on viz.html"
    assert re.search(r'<svg[^>]*class="main-svg"', html), "plotly.js did not draw the figure (no svg.main-svg)"
    assert "Interactive widget" in html or "interactive widget" in html     # the explorer's note, not a broken widget

@needs_chromium
@pytest.mark.parametrize("page", ["index.html", "dpo.html"])
def test_screenshot_not_blank(site, page, tmp_path):
    from PIL import Image
    png = tmp_path / "shot.png"
    chromium(f"--screenshot={png}", url=(site[0] / page).as_uri(), tmp=tmp_path / "profile")
    img = Image.open(png).convert("RGB")
    assert img.size == (1280, 900)
    colors = img.getcolors(maxcolors=1 << 20)
    assert len(colors) > 200, f"{page}: {len(colors)} colours: a blank page"
    white = max(c for c in colors if c[1] == (255, 255, 255))[0] if any(c[1] == (255, 255, 255) for c in colors) else 0
    assert white < 0.97 * 1280 * 900, f"{page}: the screenshot is almost all white"
