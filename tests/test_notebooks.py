"""The lesson notebooks: each runs top to bottom on the demo data (offline, as CI runs them), is stored
without outputs, and matches its py:percent twin, which is what reviews read."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
EPISODES = sorted(p.name for p in NOTEBOOKS.glob("0*.ipynb"))


def test_there_are_seven_episodes_each_with_its_script():
    assert len(EPISODES) == 7
    assert sorted(p.stem for p in NOTEBOOKS.glob("0*.py")) == [Path(e).stem for e in EPISODES]


@pytest.mark.parametrize("name", EPISODES)
def test_stored_without_outputs_and_paired(name):
    import jupytext

    nb = json.loads((NOTEBOOKS / name).read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "clear the outputs"
    assert "parameters" in code[0]["metadata"].get("tags", []), "the first code cell holds the parameters"
    twin = jupytext.read(NOTEBOOKS / name.replace(".ipynb", ".py"))
    assert [c.source for c in twin.cells] == ["".join(c["source"]) for c in nb["cells"]], \
        "the .ipynb and its .py differ: run `jupytext --sync notebooks/*.ipynb`"
    assert any("<details>" in "".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown") \
        or name.startswith("07"), "an exercise with a collapsible solution"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One folder for all episodes, as a class shares one: episode 5's run is reused by 6 and 7."""
    return tmp_path_factory.mktemp("lesson")


@pytest.mark.slow
@pytest.mark.parametrize("name", EPISODES)
def test_episode_runs_top_to_bottom(name, workdir):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    shutil.copy(NOTEBOOKS / name, workdir / name)
    start = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    seconds = time.perf_counter() - start
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    print(f"{name}: {seconds:.1f} s")
