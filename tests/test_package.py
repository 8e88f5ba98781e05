"Checks a notebook can't show: what a bare `import rlhf_nb` pulls in, and the installed metadata."
import subprocess, sys
from importlib.metadata import metadata, entry_points

def test_import_does_not_pull_viz_libraries():
    code = ("import sys, rlhf_nb, rlhf_nb.core; "
            "bad = [m for m in ('plotly', 'ipywidgets') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)

def test_version_and_requirements():
    import rlhf_nb
    md = metadata("rlhf_nb")
    assert md["Version"] == rlhf_nb.__version__
    reqs = " ".join(md.get_all("Requires-Dist"))
    for dep in ("torch", "transformers", "datasets", "peft", "accelerate"): assert dep in reqs
    assert 'extra == "viz"' in reqs and 'extra == "dev"' in reqs
