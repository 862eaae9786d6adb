"""`cxrlab tune`: search spaces, trials as run directories, pruning, honest selection, resuming, several
workers, bad input, and workers killed mid-trial against a real PostgreSQL server and a journal file."""

from __future__ import annotations

import dataclasses
import glob
import re
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from cxrlab.config import TrainConfig, load_yaml
from cxrlab.demo import make_demo_data
from cxrlab.errors import ConfigError
from cxrlab.tuning import load_space, tune
from cxrlab.tuning.space import apply
from test_faults import cli, one_line_error

TINY = {"lr": {"low": 3e-4, "high": 3e-3, "log": True}, "dropout": [0.3, 0.6]}


def tiny_base(**kw) -> TrainConfig:
    """The lesson's recipe at 64 px: a trial takes about a second."""
    return TrainConfig.recipe("lesson", **{"epochs": 4, "image_size": 64, **kw})


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("tune"), n_patients=60, size=64, difficulty="easy")


# -- search spaces ----------------------------------------------------------------------------------

def test_presets_load_and_make_valid_configs():
    for name in ("default", "lesson-grid"):
        space = load_space(name, TrainConfig(source="."))
        assert any(p.searched for p in space.params)
    grid = load_space("lesson-grid").grid()
    assert grid["lr"] == [1e-4, 3e-4, 1e-3] and load_space("lesson-grid").grid_size() == 12


def test_space_from_yaml_reads_numbers_pyyaml_leaves_as_strings(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("lr: {low: 1e-4, high: 1e-2, log: true}\nbatch_size: {low: 8, high: 32, step: 8}\n"
                    "weight_decay: [0, 1e-4]\naugment_strength: [0.5, 2.0]\n")
    space = {p.name: p for p in load_space(path).params}
    assert space["lr"].low == 1e-4 and space["lr"].log and not space["lr"].integer
    assert space["batch_size"].integer and space["batch_size"].step == 8
    assert space["weight_decay"].choices == (0, 1e-4)


def test_apply_sets_nested_and_derived_settings():
    base = TrainConfig(source=".")
    cfg = apply(base, {"lr": 1e-3, "image_size": 128, "augment.rotation": 3.0, "augment_strength": 2.0})
    assert cfg.lr == 1e-3 and cfg.data.image_size == 128
    assert cfg.data.augment.rotation == 3.0  # an explicit range wins over the strength factor
    assert cfg.data.augment.shift == pytest.approx(2 * base.data.augment.shift)
    assert base.data.augment.shift == 0.05  # the base is not changed


@pytest.mark.parametrize("space, message", [
    ({"learning_rate": [1e-3]}, r"unknown setting 'learning_rate'; searchable settings: .*\blr\b"),
    ({"split_seed": [1, 2]}, r"'split_seed' cannot be searched"),
    ({"lr": []}, r"lr is an empty list"),
    ({"lr": {"low": 1e-2, "high": 1e-3}}, r"lr is an empty range \(low 0.01 must be below high 0.001\)"),
    ({"lr": {"low": 0, "high": 1e-3, "log": True}}, r"log scale, so low must be above 0"),
    ({"dropout": [0.3, 1.5]}, r"dropout = 1.5 is not a valid setting \(dropout must be in \[0, 1\)"),
    ({"model": ["seed-cnn", "no-such-net"]}, r"model 'no-such-net' is neither"),
    ({"lr": {"low": 1e-4}}, r"lr must be a list or a range"),
    ({"model": "seed-cnn"}, r"nothing to search"),
])
def test_bad_spaces_are_refused(space, message):
    with pytest.raises(ConfigError, match=message):
        load_space(space, TrainConfig(source="."))


def test_grid_needs_lists():
    with pytest.raises(ConfigError, match="--sampler grid needs a list of values for every key; lr is a range"):
        load_space(TINY).grid()


# -- a search ----------------------------------------------------------------------------------------

def test_search_trains_runs_and_scores_only_the_best_on_test(demo, tmp_path):
    rows = []
    result = tune(demo, positive="effusion", space=TINY, trials=3, out=tmp_path / "s", config=tiny_base(),
                  pruner="none", on_trial=rows.append)
    s = result.summary
    assert (s["complete"], s["pruned"], s["failed"]) == (3, 0, 0)
    assert [r["number"] for r in rows] == [0, 1, 2] and all(r["state"] == "complete" for r in rows)
    trials = pd.read_csv(tmp_path / "s" / "trials.csv")
    assert list(trials["number"]) == [0, 1, 2] and {"param_lr", "param_dropout", "val_auc", "seconds",
                                                    "run_dir", "state"} <= set(trials.columns)
    # every trial is an ordinary run directory whose config.yaml repeats it, all on one split
    for row in trials.itertuples():
        run = Path(row.run_dir)
        cfg = load_yaml(TrainConfig, run / "config.yaml")
        assert cfg.lr == pytest.approx(row.param_lr) and cfg.dropout == row.param_dropout
        assert cfg.split_file == str(tmp_path / "s" / "split.csv")
        assert pd.read_csv(run / "split.csv").equals(pd.read_csv(tmp_path / "s" / "split.csv"))
    # validation chose; the test split was scored once, for the best trial only
    best = trials.loc[trials["val_auc"].idxmax()]
    assert s["best"]["number"] == best["number"]
    scored = [Path(d).name for d in trials["run_dir"] if (Path(d) / "eval" / "test").exists()]
    assert scored == [f"{int(best['number']):04d}"]
    assert 0 <= s["test"]["ci95"][0] <= s["test"]["auc"] <= s["test"]["ci95"][1] <= 1
    assert s["optimism"] == pytest.approx(best["val_auc"] - s["test"]["auc"])
    # best.yaml is the best trial's whole config, ready for `cxrlab train --config`
    best_cfg = load_yaml(TrainConfig, tmp_path / "s" / "best.yaml")
    assert best_cfg.lr == pytest.approx(best["param_lr"]) and best_cfg.model == "seed-cnn"
    html = (tmp_path / "s" / "summary.html").read_text()
    # offline: every figure inlined, nothing fetched (base64 text itself may spell "http" by chance)
    assert html.count("data:image/png;base64,") == 4 and not re.search(r"""(src|href)=["']?(https?:)?//""", html)

    # the same command again continues the study: more trials are added, nothing is redone
    again = tune(demo, positive="effusion", space=TINY, trials=4, out=tmp_path / "s", config=tiny_base(),
                 pruner="none")
    assert again.summary["complete"] == 4
    assert list(pd.read_csv(tmp_path / "s" / "trials.csv")["number"]) == [0, 1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "s" / "trials").iterdir()) == ["0000", "0001", "0002", "0003"]


class PruneAfterTwoEpochs(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return trial.last_step is not None and trial.last_step >= 2


def test_a_pruned_trial_stops_early_and_keeps_its_history(demo, tmp_path):
    from cxrlab.tuning.study import Objective, Search

    base = tiny_base(epochs=6, source=str(demo), positive="effusion")
    search = Search(base=dataclasses.asdict(base), space=TINY, out=str(tmp_path), study_name="p",
                    storage=None, n_trials=1)
    study = optuna.create_study(direction="maximize", pruner=PruneAfterTwoEpochs())
    study.optimize(Objective(search, load_space(TINY)), n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert sorted(trial.intermediate_values) == [1, 2]
    history = pd.read_csv(tmp_path / "trials" / "0000" / "history.csv")
    assert list(history["epoch"]) == [1, 2]  # stopped after the second of six epochs, its history kept


def test_the_lesson_grid_from_the_cli(demo, tmp_path):
    code, out = cli("tune", demo, "--positive", "effusion", "--out", tmp_path / "g", "--recipe", "lesson",
                    "--epochs", "3", "--image-size", "64", "--space", "lesson-grid", "--sampler", "grid",
                    "--trials", "2", "--pruner", "none")
    assert code == 0, out
    lines = [line for line in out.splitlines() if line.startswith("trial ")]
    assert len(lines) == 2 and all("complete" in line and "best" in line and "lr=" in line for line in lines)
    assert "2 complete, 0 pruned, 0 failed (of 2 requested)" in out
    assert "its test AUC, scored once:" in out and "validation minus test" in out
    trials = pd.read_csv(tmp_path / "g" / "trials.csv")
    assert len({(r.param_lr, r.param_dropout, r.param_batch_size) for r in trials.itertuples()}) == 2
    # the grid's fixed setting reaches every trial's config, though it is not a searched parameter
    assert all(load_yaml(TrainConfig, Path(d) / "config.yaml").model == "seed-cnn" for d in trials["run_dir"])


def test_two_workers_on_one_machine_share_the_study(demo, tmp_path):
    result = tune(demo, positive="effusion", space=TINY, trials=4, out=tmp_path / "w", config=tiny_base(),
                  pruner="none", workers=2, sampler="random")
    assert result.summary["complete"] == 4
    trials = pd.read_csv(tmp_path / "w" / "trials.csv")
    assert sorted(trials["number"]) == [0, 1, 2, 3]


# -- bad input ----------------------------------------------------------------------------------------

def test_unknown_key_in_a_space_file_is_one_line(demo, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("lr: [1.0e-3]\nlearning_rate: [1]\n")
    one_line_error(*cli("tune", demo, "--positive", "effusion", "--out", tmp_path / "o", "--space", space),
                   rf"{space}: unknown setting 'learning_rate'")
    assert not (tmp_path / "o").exists()


def test_unreachable_database_is_one_line(demo, tmp_path):
    port = _free_port()
    line = one_line_error(*cli("tune", demo, "--positive", "effusion", "--out", tmp_path / "o",
                               "--storage", f"postgresql://cxr:secret@127.0.0.1:{port}/study"),
                          rf"--storage postgresql://cxr:\*\*\*@127.0.0.1:{port}/study: cannot open the study database")
    assert "secret" not in line


def test_a_study_made_with_another_space_is_refused(demo, tmp_path):
    tune(demo, positive="effusion", space=TINY, trials=1, out=tmp_path / "s", config=tiny_base(),
         pruner="none")
    other = tmp_path / "other.yaml"
    other.write_text("lr: [1.0e-3, 3.0e-4]\n")
    one_line_error(*cli("tune", demo, "--positive", "effusion", "--out", tmp_path / "s", "--space", other,
                        "--recipe", "lesson", "--image-size", "64"),
                   r"study 's' in .* was made with another search space; choose another --study")


# -- workers killed mid-trial ------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of the test's own on loopback, in a temporary directory, run as the `postgres`
    user when the tests run as root (the server refuses root). Yields a database URL."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or ([shutil.which("initdb")] if shutil.which("initdb") else [])
    if not found:
        pytest.skip("PostgreSQL's server is not installed (CI installs Debian's postgresql)")
    bindir = Path(found[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="cxrlab-pg-"))
    as_user = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    subprocess.run([*as_user, bindir / "initdb", "-D", data, "--auth=trust", "-U", "postgres"], check=True,
                   capture_output=True)
    subprocess.run([*as_user, bindir / "pg_ctl", "-D", data, "-l", root / "log", "-w", "start", "-o",
                    f"-h 127.0.0.1 -p {port} -k {root}"], check=True, capture_output=True)
    try:
        subprocess.run([*as_user, bindir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "cxrlab"],
                       check=True, capture_output=True)
        yield f"postgresql://postgres@127.0.0.1:{port}/cxrlab"
    finally:
        subprocess.run([*as_user, bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _worker(demo: Path, out: Path, storage: str, space: Path) -> subprocess.Popen:
    """One machine's `cxrlab tune` (its own folder, the shared study): 4 trials of the lesson's recipe at
    25 epochs (a few seconds each), heartbeats every second."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    args = ["tune", demo, "--positive", "effusion", "--out", out, "--storage", storage, "--study", "shared",
            "--recipe", "lesson", "--epochs", "25", "--image-size", "64", "--space", space, "--trials", "4",
            "--pruner", "none", "--sampler", "random", "--heartbeat", "1"]
    return subprocess.Popen([sys.executable, "-m", "cxrlab", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql", "journal"])
def test_a_worker_killed_mid_trial_loses_nothing(backend, demo, tmp_path, request):
    storage = request.getfixturevalue("postgres") if backend == "postgresql" else f"journal:{tmp_path / 'shared.journal'}"
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(TINY))
    victim, survivor = (_worker(demo, tmp_path / name, storage, space) for name in ("a", "b"))
    # kill the first worker in the middle of a trial: once its run directory has a finished epoch
    deadline = time.time() + 240
    while time.time() < deadline:
        if victim.poll() is not None:
            pytest.fail(f"the first worker ended before it was killed:\n{victim.communicate()[0]}")
        if list((tmp_path / "a" / "trials").glob("*/history.csv")):
            break
        time.sleep(0.2)
    else:
        pytest.fail("the first worker never started a trial")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    out, _ = survivor.communicate(timeout=400)
    assert survivor.returncode == 0, out
    study = optuna.load_study(study_name="shared", storage=_storage(storage, tmp_path))
    states = [t.state for t in study.trials]
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))  # no duplicate trial numbers
    live = [t for t in study.trials if not t.user_attrs.get("cxrlab:surplus")]
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in live) == 4, (states, out)
    failed = [t for t in live if t.state == optuna.trial.TrialState.FAIL]
    assert failed, "the killed worker's trial was not failed"
    retried = {t.system_attrs.get("failed_trial") for t in live if t.system_attrs.get("failed_trial") is not None}
    assert {t.number for t in failed} <= retried  # each dead trial ran again, with its parameters
    assert "4 complete" in out


def _storage(url: str, tmp_path: Path):
    from cxrlab.tuning.storage import open_storage

    return open_storage(url, tmp_path)
