import numpy as np
import pandas as pd
import pytest

from cxrlab.data.split import load_split, make_split, save_split
from cxrlab.errors import DataError


def frame(n_patients=300, seed=0, pos_rate=0.25):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        y = int(rng.random() < pos_rate)
        for k in range(int(rng.integers(1, 4))):
            rows.append({"path": f"/x/{p}_{k}.png", "patient": str(p), "y": y, "split": ""})
    return pd.DataFrame(rows)


def test_no_patient_in_two_splits_and_fractions():
    f = frame()
    split, _ = make_split(f, 0.15, 0.15, seed=1)
    assert (f.assign(s=split).groupby("patient")["s"].nunique() == 1).all()
    frac = split.value_counts(normalize=True)
    assert abs(frac["test"] - 0.15) < 0.03 and abs(frac["val"] - 0.15) < 0.03


def test_stratified_within_tolerance():
    f = frame(pos_rate=0.2)
    split, _ = make_split(f, 0.15, 0.15, seed=3)
    rates = f["y"].groupby(split).mean()
    assert (abs(rates - f["y"].mean()) < 0.05).all()


def test_same_seed_same_split_other_seed_other_split():
    f = frame()
    a, _ = make_split(f, 0.15, 0.15, seed=7)
    b, _ = make_split(f, 0.15, 0.15, seed=7)
    c, _ = make_split(f, 0.15, 0.15, seed=8)
    assert a.equals(b) and not a.equals(c)


def test_lesson_scheme_fractions():
    from cxrlab.config import DataConfig

    val, test = DataConfig(split_scheme="lesson").fractions()
    assert test == 0.15 and val == pytest.approx(0.1275)


def test_presplit_keeps_test_and_resplits_tiny_val():
    f = frame(200)
    f["split"] = "train"
    f.loc[f.index[-40:], "split"] = "test"
    f.loc[f.index[:2], "split"] = "val"
    f = f[~f["patient"].isin(f.loc[f["split"] == "test", "patient"]) | (f["split"] == "test")]
    f.loc[f["patient"].isin(f.loc[f["split"] == "test", "patient"]), "split"] = "test"
    split, notes = make_split(f.reset_index(drop=True), 0.15, 0.15, seed=0)
    assert (split[f.reset_index(drop=True)["split"] == "test"] == "test").all()
    assert (split == "val").sum() > 20 and "re-split" in notes[0]


def test_presplit_leak_is_an_error():
    f = frame(50)
    f["split"] = "train"
    f.loc[0, "split"] = "test"
    f.loc[1, "patient"] = f.loc[0, "patient"]
    with pytest.raises(DataError, match="patient leakage"):
        make_split(f, 0.15, 0.15, seed=0, val_policy="keep")


def test_split_file_round_trip(tmp_path):
    f = frame()
    f["split"], _ = make_split(f, 0.15, 0.15, seed=1)
    save_split(f, tmp_path / "split.csv")
    again = load_split(tmp_path / "split.csv", f.drop(columns="split"))
    assert (again.to_numpy() == f["split"].to_numpy()).all()


def test_split_file_missing_image(tmp_path):
    f = frame(20)
    f["split"], _ = make_split(f, 0.15, 0.15, seed=1)
    save_split(f.iloc[1:], tmp_path / "split.csv")
    with pytest.raises(DataError, match="not in the split file"):
        load_split(tmp_path / "split.csv", f)


def test_split_of_many_patients_is_stratified_seeded_and_leak_free():
    """Past MANY_PATIENTS the split draws whole patients per stratum (StratifiedGroupKFold took
    minutes for 50,000 patients; the time is in BENCHMARKS.md, not asserted here)."""
    from cxrlab.data.split import MANY_PATIENTS, make_split

    n = 60_000
    rng = np.random.default_rng(0)
    patient = rng.integers(0, 2 * MANY_PATIENTS + 20_000, n)  # ~28,000 patients, 1-6 images each
    y = (rng.random(n) < 0.2).astype(int)
    frame = pd.DataFrame({"path": [f"{i}.png" for i in range(n)], "patient": patient, "y": y, "split": ""})
    split, _ = make_split(frame, 0.15, 0.15, seed=3)
    counts = split.value_counts(normalize=True)
    assert abs(counts["test"] - 0.15) < 0.01 and abs(counts["val"] - 0.15) < 0.01
    for part in ("train", "val", "test"):  # stratified: the positive rate is the same in each part
        assert abs(y[(split == part).to_numpy()].mean() - y.mean()) < 0.02
    assert frame.assign(s=split).groupby("patient")["s"].nunique().max() == 1
    again, _ = make_split(frame, 0.15, 0.15, seed=3)
    assert again.equals(split)  # seeded


def test_presplit_without_test_holds_out_a_test_split():
    # a lone train.h5, or train/ and val/ folders only: say so and split test off, whole patients
    f = frame(200)
    f["split"] = "train"
    split, notes = make_split(f, 0.15, 0.15, seed=0)
    assert 0.10 < (split == "test").mean() < 0.20 and (split == "val").sum() > 0
    assert "no test split" in notes[0]
    per_patient = pd.DataFrame({"p": f["patient"], "s": split}).groupby("p")["s"].nunique()
    assert (per_patient == 1).all()


def test_leak_messages_suggest_the_fix_that_works():
    f = frame(50)
    f["split"] = "train"
    f.loc[0, "split"] = "test"
    f.loc[1, "patient"] = f.loc[0, "patient"]
    with pytest.raises(DataError, match=r"\(test and train; .*Move each of these patients' images into one split") as exc:
        make_split(f, 0.15, 0.15, seed=0, val_policy="keep")
    assert "--val-policy resplit" not in str(exc.value)  # resplitting val cannot fix a train/test leak
    g = frame(50)
    g["split"] = "train"
    g.loc[g.index[-30:], "split"] = "test"
    g = g[~g["patient"].isin(g.loc[g["split"] == "test", "patient"]) | (g["split"] == "test")].reset_index(drop=True)
    g.loc[g.index[g["split"] == "test"], "patient"] = "t" + g.loc[g["split"] == "test", "patient"]
    first = g.index[g["split"] == "train"][0]
    g.loc[first, "split"] = "val"
    g.loc[first + 1, "patient"] = g.loc[first, "patient"]  # the same patient in val and train
    with pytest.raises(DataError, match=r"\(train and val; .*Pass --val-policy resplit"):
        make_split(g, 0.15, 0.15, seed=0, val_policy="keep")


def test_fold_assignment_is_scikit_learns_exactly():
    """`stratified_group_folds` is StratifiedGroupKFold's greedy assignment, vectorised over folds: the
    same folds on random data of many sizes, imbalances, fold counts and seeds (every saved split of
    earlier runs is reproduced)."""
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    from cxrlab.data.split import stratified_group_folds

    rng = np.random.default_rng(0)
    checked = 0
    while checked < 60:
        n = int(rng.integers(20, 400))
        groups = rng.integers(0, int(rng.integers(5, n + 1)), n).astype(str)
        y = (rng.random(n) < rng.uniform(0.05, 0.6)).astype(int)
        k = int(min(40, len(np.unique(groups)), np.bincount(y).max(), rng.integers(2, 41)))
        if y.min() == y.max() or k < 2:
            continue
        seed = int(rng.integers(0, 10_000))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ref = [f for _, f in StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(np.zeros(n), y, groups)]
        ours = stratified_group_folds(y, groups, k, seed)
        assert len(ours) == len(ref) and all(np.array_equal(a, b) for a, b in zip(ours, ref))
        checked += 1
