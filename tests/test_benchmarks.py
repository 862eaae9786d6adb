"""The speed benchmark's smoke run (one tiny repetition on synthetic data): keeps benchmarks/speed.py and
its Keras reference working. Timings are printed by the benchmark, never asserted here."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
sys.path.insert(0, str(ROOT / "benchmarks"))  # speed.py and accuracy.py, for their helpers


@pytest.mark.slow
def test_speed_benchmark_smoke_runs_both_sides(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--smoke", "--workdir", str(tmp_path)]
    with_reference = REFERENCE_PYTHON.exists()  # `make bench-env` (CI makes it); else cxrlab's side only
    if not with_reference:
        cmd.append("--no-reference")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in out.stdout.splitlines() if re.match(r"\| \db?\. ", line)}
    for label in ("1. training", "1b. training, seed-cnn-bn", "2. inference", "3. workflow: disk",
                  "3. workflow: test AUC", "4. frozen", "5. cold load", "6. peak RSS, workflow", "6. peak RSS, 1 epoch",
                  "7. demo, lesson recipe", "7. demo, default recipe", "7. demo: default / lesson", "8. demo: test-time"):
        assert any(name.startswith(label) for name in rows), (label, out.stdout)
    train = next(cells for name, cells in rows.items() if name.startswith("1. training"))
    assert float(train[0].split()[0].replace(",", "")) > 0
    ratio = next(cells for name, cells in rows.items() if name.startswith("7. demo: default / lesson"))
    assert re.match(r"[\d.]+x \(per repetition", ratio[2])
    if with_reference:  # both sides measured: a ratio in every comparison row
        assert float(train[1].split()[0].replace(",", "")) > 0 and re.fullmatch(r"[\d.]+x", train[2])
        assert "tensorflow" in out.stdout
        keras = next(cells for name, cells in rows.items() if name.startswith("7. demo: the lesson as a user runs it"))
        assert float(keras[1].split()[0]) > 0 and re.match(r"[\d.]+x \(per repetition", keras[2])


@pytest.mark.slow
def test_speed_levers_table_has_every_lever():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--levers", "--smoke", "--repeats", "1"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "img/s" not in line]
    names = [row.split("|")[1].strip() for row in rows]
    assert len(names) == 8 and names[0].startswith("all of") and names[-1].startswith("- malloc"), out.stdout
    assert any(name.startswith("- CPU kernels") for name in names), out.stdout
    assert all(float(c) > 0 for row in rows for c in row.split("|")[2:4])


def test_auc_difference_is_welchs_interval():
    from speed import auc_difference

    d, lo, hi = auc_difference([0.80, 0.82, 0.78, 0.81], [0.70, 0.74, 0.72, 0.69])
    assert d == pytest.approx(0.09) and lo < d < hi and lo > 0  # clearly better: the CI excludes 0
    d, lo, hi = auc_difference([0.70, 0.90, 0.75], [0.80, 0.72, 0.85])
    assert lo < 0 < hi  # noise: the CI spans 0


def test_accuracy_training_seeds_start_at_the_split_seed():
    from accuracy import training_seeds

    assert training_seeds(2, 1) == [2]  # one run per split: the runs BENCHMARKS.md recorded before
    assert training_seeds(2, 3) == [2, 1002, 2002]


def test_accuracy_tasks_split_by_seed_and_the_demo_task_makes_its_data_set_once(tmp_path):
    from accuracy import task_config

    assert task_config("nih-effusion", 2, tmp_path, "cache").data.split_seed == 2
    first = task_config("demo", 1, tmp_path, str(tmp_path / "cache"))
    written = {p: p.stat().st_mtime_ns for p in Path(first.source).rglob("*.png")}
    again = task_config("demo", 1, tmp_path, str(tmp_path / "cache"))
    assert again.source == first.source and again.positive == "effusion" and len(written) > 200
    assert {p: p.stat().st_mtime_ns for p in Path(again.source).rglob("*.png")} == written  # not rewritten
    assert task_config("demo", 2, tmp_path, "cache").source != first.source  # one data set per seed
