"""Build the docs site offline, without Quarto, into _site/ (open _site/index.html).

    python tools/docs.py [NAME ...] [--out DIR] [--workers N] [--execute-only]

Each notebook listed in nbs/sidebar.yml goes through what `nbdev_docs` does, with nbconvert standing in for Quarto:
1. it is executed top to bottom as `nbdev_test` runs it (execnb; cells flagged with settings.ini's `tst_flags`,
   e.g. `#| slow`, or with `#| eval: false` are skipped), because notebooks are committed without outputs;
2. nbdev's docs processors run on it (`nbdev.processors.FilterDefaults`, the list `nbdev_docs` uses: title and
   description from the first cell, a `show_doc` entry for every exported symbol, `#| hide` / `#| export` cells
   removed, links between symbols);
3. nbconvert's HTMLExporter renders it with the template in tools/docs_template/ (sidebar from sidebar.yml,
   previous/next links, a table of contents). MathJax (from jupyter-server-mathjax) and plotly.js (from plotly) are
   copied into the site, so pages need no network.

NAME builds only those notebooks (e.g. `14_dpo`); the sidebar still lists every page.
--execute-only writes the outputs into nbs/*.ipynb and stops: for `nbdev_docs` where Quarto is installed (Quarto does
not execute notebooks; the deploy workflow runs this first). Never commit notebooks with those outputs.
"""
from __future__ import annotations
import argparse, html, json, multiprocessing, os, re, shutil, sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_DIR = Path(__file__).resolve().parent / "docs_template"
# What a Jupyter kernel shows for a figure: its JSON, plus the HTML that Quarto embeds (the JSON is what we render).
PLOTLY_RENDERER = "plotly_mimetype+notebook"
MATHJAX_URL = "static/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"
WIDGET_NOTE = ('<div class="widget-note">An interactive widget: it needs a running Python kernel. Open the notebook in '
               'Jupyter or Colab to use it.</div>')

# ---------------------------------------------------------------- configuration and navigation
def config():
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)                                                    # nbdev finds settings.ini from the cwd
    from nbdev.config import get_config
    return get_config()

def sidebar(nbs: Path) -> list[tuple[str | None, str]]:
    "(section, file name) of every page in nbs/sidebar.yml, in order."
    import yaml
    contents = yaml.safe_load((nbs / "sidebar.yml").read_text())["website"]["sidebar"]["contents"]
    def walk(items, section=None):
        for it in items:
            if isinstance(it, str): yield section, it
            elif "section" in it: yield from walk(it.get("contents") or [], it["section"])
            elif "href" in it: yield section, it["href"]
    return list(walk(contents))

def frontmatter(path: Path) -> dict:
    "The page's frontmatter as nbdev reads it (title and description from the `# Title` / `> summary` cell)."
    from nbdev.process import NBProcessor
    from nbdev.frontmatter import FrontmatterProc
    return dict(NBProcessor(path, procs=FrontmatterProc, process=True).nb.frontmatter_)

def title_html(s: str) -> str:
    "A title for the page's chrome: escaped, `code` as in markdown."
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(s))

def site_info(cfg, pages):
    "Navigation for the template: sections of {title, href, file}, in sidebar order."
    from nbdev.doclinks import _nbpath2html
    nav, flat = [], []
    for section, fname in pages:
        fm = frontmatter(cfg.nbs_path / fname)
        title = fm.get("title", Path(fname).stem)
        page = dict(file=fname, href=_nbpath2html(Path(fname)).name, title=title, title_html=title_html(title),
                    description=fm.get("description", ""))
        if not nav or nav[-1]["section"] != section: nav.append(dict(section=section, pages=[]))
        nav[-1]["pages"].append(page); flat.append(page)
    return dict(title=cfg.title, description=cfg.description, nav=nav, pages=flat,
                url=(cfg.doc_host + cfg.doc_baseurl).rstrip("/") + "/",
                repo=f"{cfg.git_url}/blob/{cfg.branch}/{cfg.nbs_path.relative_to(cfg.config_path).as_posix()}/",
                colab=cfg.git_url.replace("https://github.com/", "https://colab.research.google.com/github/")
                      + f"/blob/{cfg.branch}/{cfg.nbs_path.relative_to(cfg.config_path).as_posix()}/")

# ---------------------------------------------------------------- 1. execute, as nbdev_test does
def _skip(flags):
    from nbdev.process import extract_directives
    def f(cell):
        if cell.cell_type != "code" or "nbdev_export" + "(" in cell.source: return True
        d = extract_directives(cell, remove=False)
        return d.get("eval:", [""])[0].lower() == "false" or bool(flags & d.keys())
    return f

def execute(path: Path, flags: set):
    """Run the notebook at `path` in a fresh execnb shell, outputs stored in its cells; raises with the traceback.
    Then add a run `show_doc` cell after each exported symbol that has none (nbdev's `add_show_docs`)."""
    from execnb.nbio import read_nb
    from execnb.shell import CaptureShell
    nb = read_nb(path)
    if str(frontmatter(path).get("skip_exec", "")).lower() in ("true", "1"): return nb
    k, cwd = CaptureShell(path), os.getcwd()
    os.chdir(path.parent)
    try:
        k.run_all(nb, exc_stop=True, preproc=_skip(flags))
        complete_show_docs(nb, k)
    except Exception: raise RuntimeError(f"{path.name} failed to execute:\n{k.prettytb(fname=path)}") from None
    finally: os.chdir(cwd)
    return nb

def complete_show_docs(nb, k):
    "Insert `show_doc(name)` after every exported symbol without one, as `nbdev_docs` does, and run it in shell `k`."
    from nbdev.process import NBProcessor
    from nbdev.processors import add_show_docs
    NBProcessor(nb=nb, procs=[add_show_docs], rm_directives=False).process()
    from fastcore.basics import AttrDict
    for cell in nb.cells:
        if cell.pop("has_sd", None):
            cell["metadata"] = AttrDict(cell.get("metadata") or {})        # as read_nb gives it (processors set keys)
            k.cell(cell)
            if k.exc: raise k.exc

# ---------------------------------------------------------------- 2. nbdev's docs processing
class DocsProcs:
    "nbdev's docs processors (`FilterDefaults`, honouring settings.ini's `skip_procs`) less `exec_show_docs`."
    def __call__(self, nb):
        from nbdev.process import NBProcessor
        from nbdev.processors import FilterDefaults
        procs = [p for p in FilterDefaults().procs() if getattr(p, "__name__", "") != "exec_show_docs"]
        NBProcessor(nb=nb, procs=procs).process()

def process(nb, nbs: Path):
    """nbdev's docs processing of the executed notebook, in place.

    `exec_show_docs` is left out: it re-runs the import, export and show_doc cells in a fresh shell to fill in show_doc
    outputs, for notebooks committed with outputs. Here every cell already ran in step 1, show_doc cells included (and
    re-running a cell that imports and also uses earlier names fails). settings.ini's `skip_procs = exec_show_docs`
    does the same for `nbdev_docs`."""
    cwd = os.getcwd(); os.chdir(nbs)
    try: DocsProcs()(nb)
    finally: os.chdir(cwd)
    return nb

# ---------------------------------------------------------------- 3. render with nbconvert
_re_opt = re.compile(r"^\s*#\|\s*([\w-]+)\s*:\s*(.*?)\s*$")

def _cell_options(cell) -> dict:
    "The Quarto cell options nbdev leaves in the source (`#| echo: false`), taken out of it."
    lines, opts = cell.source.splitlines(), {}
    while lines and (m := _re_opt.match(lines[0])):
        opts[m[1]] = m[2].strip("\"'"); lines.pop(0)
    cell.source = "\n".join(lines)
    return opts

def _is_plotly_preamble(out) -> bool:
    "The plotly.js loader the notebook renderer prints before the first figure (the site loads plotly.js itself)."
    h = out.get("data", {}).get("text/html", "")
    h = "".join(h) if isinstance(h, list) else h
    return "application/vnd.plotly.v1+json" not in out.get("data", {}) and "window.PlotlyConfig" in h

_re_attr_link = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)\{([^}]*)\}")

def _attr_link(m) -> str:
    "A link with Pandoc attributes, `[source](url){target=\"_blank\" .cls}` (Quarto reads them; markdown does not) → HTML."
    text, url, attrs = m.groups()
    kv = re.findall(r'([\w-]+)="([^"]*)"', attrs)
    classes = " ".join(c[1:] for c in re.findall(r"(?<![\w\"])\.[\w-]+", attrs))
    kv = [(k, v) for k, v in kv if k != "style"] + ([("class", classes)] if classes else [])
    if text == "source": kv.append(("class", "source-link"))
    url = re.sub(r"#LNone$", "", url)                  # nbdev could not find the line
    return f'<a href="{html.escape(url)}"' + "".join(f' {k}="{html.escape(v)}"' for k, v in kv) + f">{text}</a>"

def _outputs(outputs) -> tuple[list, bool]:
    "Outputs made static: plotly JSON → a div drawn by the site's plotly.js; widgets → a note. Also: any plotly?"
    import plotly.io as pio
    res, plotly = [], False
    for out in outputs:
        data = out.get("data", {})
        if _is_plotly_preamble(out) or (out.get("output_type") in ("display_data", "execute_result") and not data): continue
        if "application/vnd.plotly.v1+json" in data:
            fig = pio.from_json(json.dumps(data["application/vnd.plotly.v1+json"]), skip_invalid=True)
            out["data"] = {"text/html": pio.to_html(fig, include_plotlyjs=False, include_mathjax=False, full_html=False,
                                                    config={"responsive": True})}
            plotly = True
        elif "application/vnd.jupyter.widget-view+json" in data: out["data"] = {"text/html": WIDGET_NOTE}
        elif "text/markdown" in data: data["text/markdown"] = _re_attr_link.sub(_attr_link, data["text/markdown"])
        res.append(out)
    return res, plotly

def to_nbformat(nb):
    "The processed notebook as an nbformat node for nbconvert, Quarto's cell options applied; and: has it plotly figures?"
    import nbformat
    from execnb.nbio import nb2str
    d = json.loads(nb2str(nb))
    for i, c in enumerate(d["cells"]): c.setdefault("id", f"cell-{i}")    # cells nbdev inserted have none
    node, plotly = nbformat.reads(json.dumps(d), as_version=4), False
    cells = []
    for cell in node.cells:
        if cell.cell_type == "raw" and cell.source.lstrip().startswith("---"): continue      # the frontmatter
        if cell.cell_type == "code":
            opts = _cell_options(cell)
            if opts.get("include") == "false": continue
            if opts.get("echo") == "false" or not cell.source.strip():
                cell.metadata.setdefault("transient", {})["remove_source"] = True
            if opts.get("output") == "false": cell.outputs = []
            if "code-fold" in opts:
                cell.metadata["code_fold"] = dict(summary=opts.get("code-summary", "Code"), open=opts["code-fold"] == "show")
            cell.outputs, p = _outputs(cell.outputs); plotly |= p
            if not cell.outputs and cell.metadata.get("transient", {}).get("remove_source"): continue
        cells.append(cell)
    node.cells = cells
    return node, plotly

_re_head = re.compile(r'<h([23]) id="([^"]+)">(.*?)(?:<a class="anchor-link".*?</a>)?</h\1>', re.S)
_re_heading = re.compile(r'<h([1-6]) id="([^"]*)">(.*?)<a class="anchor-link" href="#[^"]*">', re.S)

def _pandoc_ids(body: str) -> str:
    "Heading ids as Pandoc (so Quarto) makes them, e.g. `trainer.fit`: the anchors nbdev's links between symbols use."
    seen = {}
    def f(m):
        text = html.unescape(re.sub(r"<[^>]+>", "", m[3]))
        hid = re.sub(r"\s+", "-", re.sub(r"[^\w\s.-]", "", text.strip().lower()))
        hid = re.sub(r"^[^a-z]+", "", hid) or "section"
        n = seen.get(hid, 0); seen[hid] = n + 1
        if n: hid = f"{hid}-{n}"
        return f'<h{m[1]} id="{hid}">{m[3]}<a class="anchor-link" href="#{hid}">'
    return _re_heading.sub(f, body)

def _toc(body: str) -> str:
    "An 'On this page' list of the h2/h3 headings."
    items = [f'<li class="toc-h{lvl}"><a href="#{hid}">{re.sub(r"<[^>]+>", "", text).strip()}</a></li>'
             for lvl, hid, text in _re_head.findall(body)]
    return f'<nav class="toc"><h2>On this page</h2><ul>{"".join(items)}</ul></nav>' if items else ""

def render(nb, page: dict, site: dict) -> str:
    from nbconvert import HTMLExporter
    node, plotly = to_nbformat(nb)
    fm = getattr(nb, "frontmatter_", {}) or {}
    title = fm.get("title", page["title"])
    node.metadata["title"] = f"{title.replace('`', '')} – {site['title']}"
    ex = HTMLExporter(template_name="docs_template", extra_template_basedirs=[str(TEMPLATE_DIR.parent)],
                      exclude_input_prompt=True, exclude_output_prompt=True, mathjax_url=MATHJAX_URL)
    i = [p["file"] for p in site["pages"]].index(page["file"])
    res = dict(site=site, plotly=plotly,
               page=dict(page, title_html=title_html(title), description_html=title_html(fm.get("description", ""))),
               prev=site["pages"][i - 1] if i > 0 else None,
               next=site["pages"][i + 1] if i + 1 < len(site["pages"]) else None)
    body, _ = ex.from_notebook_node(node, resources=res)
    body = _pandoc_ids(body.replace(f'href="{site["url"]}', 'href="'))      # links between pages stay in the site
    body = _page_links(body, site)
    return body.replace("<!--TOC-->", _toc(body), 1)

_re_nb_link = re.compile(r'href="([\w.-]+)\.ipynb(#[^"]*)?"')

def _page_links(body: str, site: dict) -> str:
    "Links between notebooks (`13_ppo.ipynb#gae`) as links between pages (`ppo.html#gae`), as Quarto rewrites them."
    pages = {Path(p["file"]).stem: p["href"] for p in site["pages"]}
    return _re_nb_link.sub(lambda m: f'href="{pages[m[1]]}{m[2] or ""}"' if m[1] in pages else m[0], body)

# ---------------------------------------------------------------- one notebook, in its own process
def build_page(fname: str, site: dict, out: Path, execute_only: bool = False, threads: int | None = None):
    "Execute, process and render one notebook (or only execute it); returns the page's name and the seconds it took."
    if threads:                                      # before torch is imported; a caller's setting wins
        for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"): os.environ.setdefault(v, str(threads))
    cfg = config()
    os.environ["IN_TEST"] = "1"                                     # as nbdev_test and nbdev's processing set it
    os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["PLOTLY_RENDERER"] = PLOTLY_RENDERER
    # bitsandbytes (a dev dependency, imported by peft) logs a warning on CPUs with AVX512-BF16 when the optional
    # `kernels` package is missing; it is about this machine, not the page, so it stays out of the cell outputs
    import logging; logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    t0, path = time.time(), cfg.nbs_path / fname
    nb = execute(path, set(cfg.tst_flags.split()))
    if execute_only:
        from execnb.nbio import write_nb
        write_nb(nb, path); return fname, time.time() - t0
    page = next(p for p in site["pages"] if p["file"] == fname)
    (out / page["href"]).write_text(render(process(nb, cfg.nbs_path), page, site), encoding="utf-8")
    return page["href"], time.time() - t0

def copy_static(out: Path, nbs: Path):
    "MathJax, plotly.js and the site's CSS, served from the site itself; nbs/'s folders (images the pages show)."
    for d in nbs.iterdir():
        if d.is_dir() and not d.name.startswith((".", "_")): shutil.copytree(d, out / d.name, dirs_exist_ok=True)
    import jupyter_server_mathjax, plotly
    static = out / "static"
    static.mkdir(parents=True, exist_ok=True)
    mj = static / "mathjax"
    if not mj.exists(): shutil.copytree(Path(jupyter_server_mathjax.__file__).parent / "static", mj)
    shutil.copy2(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", static / "plotly.min.js")
    shutil.copy2(TEMPLATE_DIR / "static" / "site.css", static / "site.css")

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="notebooks to build (e.g. 14_dpo); all in sidebar.yml by default")
    ap.add_argument("--out", default="_site", help="output folder, relative to the project root")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="notebooks built at once")
    ap.add_argument("--execute-only", action="store_true", help="write outputs into nbs/*.ipynb and stop (for Quarto)")
    args = ap.parse_args(argv)
    t0, cfg = time.time(), config()
    pages = sidebar(cfg.nbs_path)
    missing = [f for _, f in pages if not (cfg.nbs_path / f).exists()]
    if missing: sys.exit(f"sidebar.yml lists notebooks that do not exist: {', '.join(missing)}")
    site = site_info(cfg, pages)
    files = [p["file"] for p in site["pages"]]
    if args.names:
        want = {n if n.endswith(".ipynb") else n + ".ipynb" for n in args.names}
        unknown = want - set(files)
        if unknown: sys.exit(f"not in sidebar.yml: {', '.join(sorted(unknown))} (pages: {', '.join(files)})")
        files = [f for f in files if f in want]
    out = (cfg.config_path / args.out).resolve()
    if not args.execute_only:
        if not args.names and out.exists() and any(out.iterdir()):
            if not (out / "static" / "site.css").exists(): sys.exit(f"refusing to clear {out}: not a site this script built")
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True); copy_static(out, cfg.nbs_path)
    ctx = multiprocessing.get_context("spawn")                      # a fresh interpreter for every notebook
    failed, done = [], []
    with ProcessPoolExecutor(max_workers=max(1, args.workers), mp_context=ctx, max_tasks_per_child=1) as pool:
        # Several notebooks at once, each on one thread: torch's default (a thread per core, in every process) makes
        # them fight over the cores, several times slower on 2 cores than this.
        threads = max(1, (os.cpu_count() or 1) // args.workers) if args.workers > 1 else None
        futs = {f: pool.submit(build_page, f, site, out, args.execute_only, threads) for f in files}
        for f, fut in futs.items():
            try: name, secs = fut.result()
            except Exception as e: failed.append(f); print(f"FAILED {f}\n{e}", file=sys.stderr); continue
            done.append(name); print(f"  {name:<28} {secs:6.1f} s", flush=True)
    if failed: sys.exit(f"docs build failed on: {', '.join(failed)}")
    where = cfg.nbs_path if args.execute_only else out
    print(f"{'executed' if args.execute_only else 'built'} {len(done)} pages in {time.time() - t0:.0f} s "
          f"with {args.workers} workers → {where}")
    if not args.execute_only: print(f"open {out / 'index.html'}")

if __name__ == "__main__": main()
