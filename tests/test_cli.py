import gc
import json
import re
import os
import subprocess
import sys

import pytest

from typer.testing import CliRunner

from cxrlab.cli import app
from cxrlab.errors import CxrlabError

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "demo" in result.output and "data" in result.output


def test_cli_starts_without_the_heavy_libraries():
    """`cxrlab --help` must not import torch, scikit-learn or matplotlib (20 s on 2 slow cores)."""
    code = ("import sys, cxrlab, cxrlab.cli; heavy = [m for m in ('torch', 'sklearn', 'matplotlib', 'pandas') "
            "if m in sys.modules]; assert not heavy, heavy; cxrlab.TrainConfig; assert 'torch' not in sys.modules; "
            "assert callable(cxrlab.train) and callable(cxrlab.evaluate) and 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_console_entry_point_freezes_its_objects_before_python_exits():
    """Python's last garbage collection at exit walked torch's and scikit-learn's objects for 1.8-2.0 s of a
    lesson run; `main` freezes them first, on success and on a user error alike (the exit code is kept)."""
    code = ("import gc, sys; from cxrlab.cli import main; sys.argv = ['cxrlab'] + sys.argv[1:]\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    print(exc.code, gc.get_freeze_count() > 0)")
    ok = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, check=True)
    assert ok.stdout.split()[-2:] == ["0", "True"], ok.stdout
    bad = subprocess.run([sys.executable, "-c", code, "train", "/no/such/folder", "--positive", "x"],
                         capture_output=True, text=True, check=True)
    assert bad.stdout.split()[-2:] == ["2", "True"], bad.stdout


def test_a_command_imports_with_the_collector_paused_and_runs_with_it_on():
    """Full collections during torch's and scikit-learn's imports took 0.4-0.6 s of a lesson run and freed
    nothing: in cxrlab's own process a command imports with the collector paused, then freezes what the
    imports made and runs with the collector back on (an interrupted import turns it back on too)."""
    code = ("import gc, sys; import cxrlab.demo; from cxrlab.cli import main\n"
            "cxrlab.demo.run_demo = lambda out, **kw: sys.exit(f'running {gc.isenabled()} {gc.get_freeze_count() > 0}')\n"
            "sys.argv = ['cxrlab', 'demo', '--out', 'x']\n"
            "main()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stderr.strip().endswith("running True True"), out.stderr


def test_outside_cxrlabs_own_process_the_collector_is_left_alone(monkeypatch):
    from cxrlab import cli

    frozen = gc.get_freeze_count()
    with cli._heavy_imports():  # a test or a notebook calling the app: nothing changes
        assert gc.isenabled()
    assert gc.get_freeze_count() == frozen
    monkeypatch.setattr(cli, "_own_process", True)
    with pytest.raises(ImportError):
        with cli._heavy_imports():
            assert not gc.isenabled()
            raise ImportError("an import failed")
    assert gc.isenabled() and gc.get_freeze_count() > frozen
    gc.unfreeze()  # this test process goes on collecting as before


def test_data_summary_writes_json_and_plots(tmp_path, flat_folders):
    out = tmp_path / "summary"
    result = runner.invoke(app, ["data", "summary", str(flat_folders), "--out", str(out), "--image-size", "32"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == {"effusion": 18, "normal": 18}
    assert sum(sum(v.values()) for v in summary["by_split"].values()) == 36
    assert summary["patients"] == 24 and summary["modes"] == {"L": 36}
    for name in ("class_distribution.png", "samples.png", "augmentation.png"):
        assert (out / name).stat().st_size > 1000
    assert "effusion" in result.output


def test_summary_reports_duplicates_and_skipped(tmp_path, flat_folders):
    src = flat_folders / "normal" / "00000100_000.png"
    (flat_folders / "normal" / "00000200_000.png").write_bytes(src.read_bytes())
    (flat_folders / "normal" / "00000201_000.png").write_bytes(b"")
    out = tmp_path / "s"
    result = runner.invoke(app, ["data", "summary", str(flat_folders), "--out", str(out),
                                 "--image-size", "32", "--on-bad-image", "skip"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exact_duplicates"]["groups"] == 1
    assert summary["skipped"]["count"] == 1 and "00000201_000.png" in summary["skipped"]["files"][0]["path"]
    assert "skipped" in result.output


def test_user_error_is_one_line_exit_2(tmp_path, flat_folders):
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "cxrlab", "data", "summary", str(flat_folders),
                           "--positive", "pneumothorax", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert "unknown label 'pneumothorax'" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("flags,named", [(["--lr-patience", "2"], "--lr-patience"),
                                         (["--lr-factor", "0.3", "--lr-patience", "1"], "--lr-patience and --lr-factor")])
def test_plateau_flags_for_a_cosine_run_are_refused_not_ignored(tmp_path, flat_folders, flags, named):
    result = runner.invoke(app, ["train", str(flat_folders), "--out", str(tmp_path / "run"), *flags])
    # a CxrlabError: cli.main prints it as one line and exits 2 (test_user_error_is_one_line_exit_2)
    assert isinstance(result.exception, CxrlabError)
    assert str(result.exception).startswith(f"{named} steer the plateau schedule, but this run's is cosine")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_demo_runs_offline_and_is_deterministic(tmp_path):
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "d1")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "d1" / "summary" / "summary.json").read_text())
    assert summary["task"] == {"positive": "effusion", "negatives": ["normal"]}
    assert summary["images"] > 200 and summary["patients"] < summary["images"]
    history = (tmp_path / "d1" / "run" / "history.csv").read_text()
    assert "trained seed-cnn (54,627 parameters)" in result.output and history.count("\n") == 21
    from cxrlab.config import LESSON_LR, TrainConfig, load_yaml

    # the demo teaches the lesson: the lesson's constant rate of 1e-3, not cxrlab's default cosine
    demo_cfg = load_yaml(TrainConfig, tmp_path / "d1" / "run" / "config.yaml")
    assert demo_cfg.lr == LESSON_LR and (demo_cfg.lr_schedule, demo_cfg.lr_patience) == ("plateau", 0)
    assert TrainConfig().lr_schedule == "cosine"
    # the demo teaches: neither trivial nor hopeless (README: 0.80-0.95), with an interval wider than zero,
    # some mistakes at the threshold, and a map that points at the effusion more often than chance
    metrics = json.loads((tmp_path / "d1" / "run" / "eval" / "test" / "metrics.json").read_text())
    low, high = metrics["ci95"]["auc"]
    assert 0.80 <= metrics["auc"] <= 0.95 and high - low > 0.05
    assert metrics["false_negatives"] + metrics["false_positives"] > 0
    pointing = re.search(r"on (\d+)% of the (\d+) boxed test images \(95% CI (\d+)%-\d+%\); a random point would: (\d+)%",
                         result.output)
    assert pointing and int(pointing[3]) > int(pointing[4]), result.output
    from cxrlab.demo import make_demo_data

    make_demo_data(tmp_path / "d2")
    a, b = (sorted((tmp_path / d / "data").rglob("*.png")) for d in ("d1", "d2"))
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert (tmp_path / "d1" / "boxes.csv").read_text() == (tmp_path / "d2" / "boxes.csv").read_text()


def test_every_train_config_key_is_a_flag():
    import dataclasses

    from cxrlab.cli import _TRAIN_FLAGS
    from cxrlab.config import DataConfig, TrainConfig

    keys = {f.name for f in dataclasses.fields(TrainConfig)} | {f.name for f in dataclasses.fields(DataConfig)}
    # DATA, --negative and --images are parsed on their own; `data` is the nested DataConfig itself
    assert sorted(keys - _TRAIN_FLAGS - {"source", "negative", "images_dir", "data"}) == []


def test_a_training_log_piped_to_a_file_has_one_line_per_epoch(tmp_path):
    """Piped, at the default width of 80 columns: no wrapped epoch lines, no bars, no blank lines."""
    from cxrlab.demo import make_demo_data

    data = make_demo_data(tmp_path / "d", n_patients=30, size=64, difficulty="easy")
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    with open(tmp_path / "train.log", "w") as log:
        proc = subprocess.run([sys.executable, "-m", "cxrlab", "train", str(data), "--recipe", "lesson", "--epochs", "3",
                               "--image-size", "64", "--out", str(tmp_path / "r")], stdout=log, stderr=subprocess.STDOUT,
                              env=env)
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert proc.returncode == 0, lines
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 3 and all("val_auc" in line and line.rstrip().endswith(("s", "*")) for line in epochs)
    assert len(epochs[0]) > 80 and "" not in lines


def test_train_evaluate_scores_the_test_split_as_evaluate_does(tmp_path):
    """`train --evaluate` is `train` then `evaluate RUN` in one process: the same files, predictions and metrics,
    and the metrics table printed."""
    from cxrlab.demo import make_demo_data

    data = make_demo_data(tmp_path / "d", n_patients=80, size=64, difficulty="easy")
    run = tmp_path / "r"
    result = runner.invoke(app, ["train", str(data), "--recipe", "lesson", "--epochs", "2", "--image-size", "64",
                                 "--out", str(run), "--cache-dir", str(tmp_path / "cache"), "--evaluate"])
    assert result.exit_code == 0, result.output
    assert "AUC" in result.output and "95% CI" in result.output and f"wrote {run}" in result.output
    folder = run / "eval" / "test"
    together = json.loads((folder / "metrics.json").read_text())
    files, predictions = sorted(p.name for p in folder.iterdir()), (folder / "predictions.csv").read_text()
    assert (folder / "roc.png").exists()
    result = runner.invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 0, result.output
    apart = json.loads((folder / "metrics.json").read_text())
    assert together == apart and together["split"] == "test" and together["n"] > 0
    assert sorted(p.name for p in folder.iterdir()) == files and (folder / "predictions.csv").read_text() == predictions


def test_thresholds_print_enough_digits_to_tell_them_from_1():
    import pandas as pd

    from cxrlab.cli import _threshold_text
    from cxrlab.evaluation.compare import markdown_table

    assert _threshold_text(0.999998) == "0.999998" and _threshold_text(0.5) == "0.5"
    table = markdown_table(pd.DataFrame({"run": ["a"], "auc": [0.91234], "threshold": [0.999998]}))
    assert "| a | 0.912 | 0.999998 |" in table
