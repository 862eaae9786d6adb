"""The bad-input catalogue: each case builds a bad input, runs the command as a user does (a real
process, output to a pipe), and checks the one-line error, the exit code and that nothing written
before is lost. The README's "Bad input" promises first, then issue 16's cases by number.
Totals are in BENCHMARKS.md ("Bad-input catalogue")."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import xray
from cxrlab.demo import make_demo_data


def cli(*args, cwd=None, timeout=300) -> tuple[int, str]:
    """`cxrlab ARGS` in a pipe, as a script or a log file sees it: (exit code, all it printed)."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # a pipe's default width (80)
    proc = subprocess.run([sys.executable, "-m", "cxrlab", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def one_line_error(code: int, out: str, pattern: str) -> str:
    """Exit code 2, no traceback, and exactly one line `error: ...` that matches `pattern`."""
    assert code == 2, out
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    assert re.search(pattern, errors[0]), errors[0]
    return errors[0]


TRAIN = ["--model", "seed-cnn", "--no-augment", "--image-size", "64", "--lr", "1e-3", "--lr-schedule", "plateau",
         "--lr-patience", "0", "--early-stopping", "0", "--min-epoch-images", "0"]  # a constant rate


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("faults"), n_patients=40, size=64, difficulty="easy")


@pytest.fixture(scope="session")
def run(lesson_run) -> Path:
    """The session's finished run (conftest); cases that damage it work on a copy."""
    return lesson_run


def copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


# -- the README's promises ---------------------------------------------------------------------------

def test_corrupt_image_names_the_file(flat_folders, tmp_path):
    (flat_folders / "normal" / "00000100_000.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    line = one_line_error(*cli("data", "summary", flat_folders, "--out", tmp_path / "s"),
                          r"00000100_000\.png: cannot decode image: Truncated File Read")
    assert "--on-bad-image skip" in line


def test_empty_class_folder(flat_folders, tmp_path):
    (flat_folders / "pneumothorax").mkdir()
    one_line_error(*cli("data", "summary", flat_folders, "--out", tmp_path / "s"), r"pneumothorax has no images")


def test_unknown_label_lists_the_labels(flat_folders, tmp_path):
    one_line_error(*cli("data", "summary", flat_folders, "--positive", "Pneumothorax", "--out", tmp_path / "s"),
                   r"unknown label 'Pneumothorax'; the data has: effusion, normal")


def test_image_size_too_small_for_the_model(demo, tmp_path):
    one_line_error(*cli("train", demo, *TRAIN, "--image-size", "32", "--out", tmp_path / "r"),
                   r"--image-size 32 is too small for seed-cnn")


def test_truncated_checkpoint_refused_and_kept(run, tmp_path):
    run = copy_run(run, tmp_path)
    damaged = run.joinpath("last.ckpt").read_bytes()[:500]
    run.joinpath("last.ckpt").write_bytes(damaged)
    one_line_error(*cli("train", "--resume", run), r"last\.ckpt: cannot read checkpoint .*Nothing was overwritten")
    assert run.joinpath("last.ckpt").read_bytes() == damaged


# -- issue 16, case by case ----------------------------------------------------------------------------

def test_01_a_run_without_positive_names_its_positive_class(demo, tmp_path):
    code, out = cli("train", demo, *TRAIN, "--epochs", "1", "--out", tmp_path / "a")
    assert code == 0, out
    from cxrlab.config import TrainConfig, load_yaml

    assert load_yaml(TrainConfig, tmp_path / "a" / "config.yaml").positive == "effusion"
    code, out = cli("predict", tmp_path / "a", demo / "effusion", "--out", tmp_path / "p.csv")
    assert code == 0 and "P(effusion)" in out and "P(None)" not in out, out
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert rows and all(r["predicted"] in ("effusion", "normal") for r in rows)


def _mount_tmpfs(path: Path, size_kb: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_02_full_disk_is_one_line_keeps_the_last_checkpoint_and_no_temp_file(demo, tmp_path):
    # size the disk from a real one-epoch run: room for epoch 1's files, not for a second checkpoint
    probe = tmp_path / "probe"
    assert cli("train", demo, *TRAIN, "--epochs", "1", "--out", probe)[0] == 0
    used = sum(p.stat().st_size for p in probe.rglob("*") if p.is_file() and p.name not in ("run.json", "curves.png"))
    ckpt = probe.joinpath("last.ckpt").stat().st_size
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, max(1100, (used + ckpt // 2) // 1024 + 64)):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        out_dir = disk / "run"
        line = one_line_error(*cli("train", demo, *TRAIN, "--epochs", "3", "--out", out_dir),
                              r"no space left on device writing .*; the last good checkpoint \(epoch 1\) is kept")
        assert "Traceback" not in line
        assert not [p.name for p in out_dir.iterdir() if ".tmp" in p.name]
        from cxrlab.checkpoint import load_checkpoint

        assert load_checkpoint(out_dir / "last.ckpt")["epoch"] == 1
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_02_temp_file_of_a_killed_write_is_cleaned_up(run, tmp_path):
    run = copy_run(run, tmp_path)
    stale = run / f".last.ckpt.tmp{os.getpid() + 1}"
    stale.write_bytes(b"")  # what kill -9 during a checkpoint write leaves
    code, out = cli("train", "--resume", run)
    assert code == 0, out
    assert not stale.exists()


def _listening(pids: set[int]) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) of TCP sockets the processes listen on."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                found.add(fields[1].rsplit(":", 1)[0])
    return found


def _descendants(pid: int) -> set[int]:
    out, todo = {pid}, [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            out.update(kids)
            todo += kids
    return out


LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
@pytest.mark.slow
def test_04_devices_2_listens_on_loopback_only(demo, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "cxrlab", "train", demo, *TRAIN, "--epochs", "3",
                             "--devices", "2", "--out", tmp_path / "ddp"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = set()
    while proc.poll() is None:
        seen |= _listening(_descendants(proc.pid))
        time.sleep(0.05)
    assert proc.returncode == 0, proc.stdout.read()
    assert seen, "no listening socket was seen: the probe did not work"
    assert seen <= LOOPBACK, seen


def test_05_hdf5_patient_of_another_length(tmp_path):
    import h5py

    with h5py.File(tmp_path / "train.h5", "w") as f:
        f["image"] = np.stack([xray(i, 32) for i in range(10)])
        f["label"] = np.arange(10) % 2
        f["patient"] = np.arange(6)
    one_line_error(*cli("data", "summary", tmp_path / "train.h5", "--out", tmp_path / "s"),
                   r"train\.h5: 'patient' has 6 entries for 10 images")


def test_06_latin1_csv_through_its_folder(nih_csv, tmp_path):
    nih_csv.write_bytes(nih_csv.read_bytes() + b"00000099_000.png,No Finding,99,0,caf\xe9\n")
    one_line_error(*cli("data", "summary", nih_csv.parent, "--out", tmp_path / "s"),
                   r"labels\.csv: not UTF-8 text \(byte 0xe9 at offset \d+\); save it as UTF-8")


@pytest.mark.parametrize("text", ["source: [unclosed\n", "source: !!python/object/apply:os.system ['touch pwned']\n"])
def test_07_malformed_config_yaml(tmp_path, text):
    bad = tmp_path / "config.yaml"
    bad.write_text(text)
    one_line_error(*cli("train", "--config", bad, "--out", tmp_path / "r", cwd=tmp_path),
                   r"config\.yaml line 1: not valid YAML")
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "r").exists()


def test_08_out_is_an_existing_file(demo, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    one_line_error(*cli("train", demo, *TRAIN, "--out", target), r"notes\.txt is a file, not a folder")
    assert target.read_text() == "keep me"


def test_09_nan_in_epoch_1_says_what_is_true_and_the_rerun_needs_no_overwrite(demo, tmp_path):
    out = tmp_path / "nan"
    one_line_error(*cli("train", demo, *TRAIN, "--lr", "1e30", "--epochs", "2", "--out", out),
                   r"loss became nan in epoch 1; .*No epoch completed, so nothing was kept")
    code, text = cli("train", demo, *TRAIN, "--epochs", "1", "--out", out)
    assert code == 0, text


def test_10_broken_symlinks_are_errors_or_listed(flat_folders, tmp_path):
    import json

    (flat_folders / "normal" / "x.png").symlink_to(tmp_path / "missing.png")
    one_line_error(*cli("data", "summary", flat_folders, "--out", tmp_path / "s"), r"x\.png: a broken symbolic link")
    code, out = cli("data", "summary", flat_folders, "--on-bad-image", "skip", "--out", tmp_path / "s")
    assert code == 0, out
    skipped = json.loads((tmp_path / "s" / "summary.json").read_text())["skipped"]
    assert skipped["count"] == 1 and skipped["files"][0]["path"].endswith("x.png")


def test_11_resume_over_damaged_best_weights_rebuilds_them(demo, tmp_path):
    out = tmp_path / "r"
    assert cli("train", demo, *TRAIN, "--epochs", "1", "--out", out)[0] == 0  # best epoch = last epoch
    good = (out / "best.safetensors").read_bytes()
    (out / "best.safetensors").write_bytes(good[:100])
    code, text = cli("train", "--resume", out)
    assert code == 0, text
    assert (out / "best.safetensors").read_bytes() == good


def test_11_damaged_best_weights_of_an_earlier_epoch_is_a_clear_error(run, tmp_path):
    from cxrlab.errors import CxrlabError
    from cxrlab.runs import RunDir
    from cxrlab.training.trainer import check_best_weights

    run = copy_run(run, tmp_path)
    (run / "best.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(CxrlabError, match=r"best epoch \(1\) is not the one last\.ckpt holds \(2\).*--overwrite"):
        check_best_weights(RunDir(run), {"best_epoch": 1, "epoch": 2, "model": {}})


def test_12_predict_can_skip_unreadable_images(run, demo, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(next((demo / "effusion").glob("*.png")), scans / "good.png")
    (scans / "bad.png").write_bytes(b"not a png")
    line = one_line_error(*cli("predict", run, scans), r"bad\.png: not a readable image")
    assert "--on-bad-image skip" in line
    code, out = cli("predict", run, scans, "--on-bad-image", "skip", "--out", tmp_path / "p.csv")
    assert code == 0 and "skipped" in out and "bad.png" in out, out
    assert [Path(r["path"]).name for r in csv.DictReader(open(tmp_path / "p.csv"))] == ["good.png"]


def test_14_a_lone_train_h5_gets_a_test_split(tmp_path):
    import h5py

    with h5py.File(tmp_path / "train.h5", "w") as f:
        f["image"] = np.stack([xray(i, 32) for i in range(40)])
        f["label"] = np.arange(40) % 2
    code, out = cli("data", "summary", tmp_path / "train.h5", "--image-size", "32", "--out", tmp_path / "s")
    assert code == 0 and "no test split" in out, out


def test_15_mismatched_init_from(run, demo, tmp_path):
    one_line_error(*cli("train", demo, *TRAIN[2:], "--model", "seed-cnn-bn", "--init-from", run, "--out", tmp_path / "r"),
                   r"--init-from .*: its backbone does not match this model \(size mismatch")


def test_16_a_failed_start_does_not_block_its_rerun(demo, tmp_path):
    out = tmp_path / "r"
    one_line_error(*cli("train", demo, *TRAIN, "--weights", tmp_path / "none.safetensors", "--out", out),
                   r"none\.safetensors: weights file not found")
    code, text = cli("train", demo, *TRAIN, "--epochs", "1", "--out", out)
    assert code == 0, text
    # a folder holding anything else is still refused without --overwrite
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    one_line_error(*cli("train", demo, *TRAIN, "--out", tmp_path / "mine"), r"already exists; pass --overwrite")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_17_config_repeats_the_run_from_another_directory(demo, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(demo, work / "data")
    assert cli("train", "data", *TRAIN, "--epochs", "1", "--out", "r1", cwd=work)[0] == 0
    code, out = cli("train", "--config", work / "r1" / "config.yaml", "--out", tmp_path / "r2", cwd="/")
    assert code == 0, out
    from cxrlab.config import TrainConfig, load_yaml

    assert load_yaml(TrainConfig, tmp_path / "r2" / "config.yaml").source == str(work / "data")


def test_18_resume_refuses_flags_it_cannot_honour(run, tmp_path):
    run = copy_run(run, tmp_path)
    before = (run / "last.ckpt").read_bytes()
    one_line_error(*cli("train", "--resume", run, "--epochs", "6"),
                   r"--resume continues .* it cannot also apply --epochs")
    assert (run / "last.ckpt").read_bytes() == before
