"""Write README.md from nbs/index.ipynb where Quarto (and so `nbdev_readme`) is not available.

Markdown cells are copied as they are (relative links re-rooted at nbs/); code cells become ```python blocks with their stored text outputs; cells
marked `#| hide` are left out and nbdev directives are stripped — what `nbdev_readme` renders, without Quarto.
Usage: python tools/readme.py [--check]   (--check: exit 1 if README.md is out of date)."""
import re, sys
from pathlib import Path
from execnb.nbio import read_nb
from nbdev.process import extract_directives

def _from_root(md: str) -> str:
    "Relative links in nbs/index.ipynb point into nbs/; README.md sits one folder up."
    return re.sub(r"\]\((?!https?://|#|/|nbs/)([^)\s]+)\)", r"](nbs/\1)", md)

def cell_md(cell):
    if cell.cell_type == "markdown": return _from_root(cell.source.strip())
    directives = extract_directives(cell, remove=True)
    if "hide" in directives or not cell.source.strip(): return None
    out = [f"```python\n{cell.source.strip()}\n```"]
    for o in cell.get("outputs", []):
        text = "".join(o.get("text", "") or o.get("data", {}).get("text/plain", ""))
        if text.strip(): out.append(f"```\n{text.rstrip()}\n```")
    return "\n\n".join(out)

def readme(nb_path="nbs/index.ipynb"):
    parts = [cell_md(c) for c in read_nb(nb_path).cells]
    return "\n\n".join(p for p in parts if p) + "\n"

if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    text = readme(root / "nbs" / "index.ipynb")
    if "--check" in sys.argv:
        if (root / "README.md").read_text() != text: sys.exit("README.md is out of date: run `python tools/readme.py`")
    else: (root / "README.md").write_text(text)
