"""Patient-grouped, stratified, seeded train/val/test split, saved as a file and reusable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError

SPLITS = ("train", "val", "test")
SPLIT_COLUMNS = ["path", "patient", "y", "split"]


# StratifiedGroupKFold assigns patients greedily in Python, O(patients x folds): 50,000 patients take
# minutes. Above this many, the strata are large enough for a seeded draw of whole patients per stratum.
MANY_PATIENTS = 5_000


def _grouped_holdout(y: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a held-out part of about `fraction`, whole patients only, stratified.
    StratifiedGroupKFold cuts many small balanced folds; we take folds until the target size."""
    if fraction <= 0:
        return np.zeros(len(y), bool)
    n_groups = len(np.unique(groups))
    if n_groups > MANY_PATIENTS:
        return _grouped_holdout_many(y, groups, fraction, seed)
    n_folds = int(min(40, n_groups, np.bincount(y).max(), max(2, round(1 / fraction * 4))))
    if n_groups < 2:
        raise DataError("cannot split: all images belong to one patient")
    mask = np.zeros(len(y), bool)
    target = fraction * len(y)
    folds = stratified_group_folds(y, groups, n_folds, seed)
    for fold in folds:
        if mask.sum() + len(fold) / 2 > target:  # take a fold only while it brings us closer
            break
        mask[fold] = True
    if not mask.any():  # tiny data: at least one fold
        mask[folds[0]] = True
    return mask


def stratified_group_folds(y: np.ndarray, groups: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """The test folds of scikit-learn's StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed),
    identical to its (tests compare them), about 30x faster: its greedy assignment scores every fold for
    every patient with one np.std call each (1.3 s of a 10-epoch lesson run on the NIH subset's 633
    images); here one call scores all folds for a patient. Folds are arrays of image indices, ascending."""
    _, y_inv, y_cnt = np.unique(y, return_inverse=True, return_counts=True)
    _, groups_inv = np.unique(groups, return_inverse=True)
    n_groups, n_classes = groups_inv.max() + 1, len(y_cnt)
    per_group = np.zeros((n_groups, n_classes))
    np.add.at(per_group, (groups_inv, y_inv), 1)
    perm = np.arange(n_groups)
    np.random.RandomState(seed).shuffle(perm)  # what sklearn's check_random_state(seed).shuffle does
    per_group = per_group[perm]
    inv_perm = np.empty_like(perm)
    inv_perm[perm] = np.arange(n_groups)
    groups_inv = inv_perm[groups_inv]
    per_fold = np.zeros((n_folds, n_classes))
    fold_of_group = np.empty(n_groups, int)
    eye = np.eye(n_folds)[:, :, None]
    for g in np.argsort(-np.std(per_group, axis=1), kind="stable"):
        # every candidate at once: (fold i with the patient added) / class counts, std over folds per class,
        # mean over classes; then sklearn's own scan (a near-tie goes to the emptier fold, first one wins)
        scores = np.std((per_fold[None] + eye * per_group[g]) / y_cnt.reshape(1, 1, -1), axis=1).mean(axis=1)
        sizes = per_fold.sum(axis=1)
        best, best_score, best_size = 0, np.inf, np.inf
        for i, (score, size) in enumerate(zip(scores.tolist(), sizes.tolist())):
            # np.isclose's test with its defaults (rtol 1e-5, atol 1e-8), without its per-call cost
            if score < best_score or (abs(score - best_score) <= 1e-8 + 1e-5 * abs(best_score) and size < best_size):
                best, best_score, best_size = i, score, size
        per_fold[best] += per_group[g]
        fold_of_group[g] = best
    image_fold = fold_of_group[groups_inv]
    return [np.flatnonzero(image_fold == i) for i in range(n_folds)]


def _grouped_holdout_many(y: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The same hold-out for many patients in O(images): patients with any positive image and the
    others are two strata; each is shuffled (seeded) and whole patients are taken until the stratum's
    share of images reaches `fraction`."""
    per = pd.DataFrame({"g": groups, "y": y}).groupby("g", sort=True)["y"].agg(["max", "size"])
    rng = np.random.default_rng(seed)
    held = []
    for _, stratum in per.groupby("max"):
        order = rng.permutation(len(stratum))
        sizes = stratum["size"].to_numpy()[order]
        take = int(np.searchsorted(np.cumsum(sizes), fraction * sizes.sum(), side="right"))
        held.append(stratum.index.to_numpy()[order][:max(take, 1)])
    return pd.Series(groups).isin(np.concatenate(held)).to_numpy()  # hashed; np.isin on strings is quadratic


def patient_sample(y: np.ndarray, patients: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of about `fraction` of the images, whole patients only, stratified by label: a
    labelled sample of a new site to choose a threshold on, the rest left to evaluate on."""
    if fraction >= 1:
        return np.ones(len(y), bool)
    return _grouped_holdout(np.asarray(y).astype(int), np.asarray(patients).astype(str), fraction, seed)


def _multilabel_holdout(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of about `fraction` of the patients, stratified over every finding at once: iterative
    stratification (Sechidis et al. 2011, the iterative-stratification package) of the patients, each
    labelled with the findings any of its images carries (a missing label counts as absent)."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    if fraction <= 0:
        return np.zeros(len(groups), bool)
    per = pd.DataFrame(np.nan_to_num(labels, nan=0.0), index=groups).groupby(level=0, sort=True).max()
    if len(per) < 2:
        raise DataError("cannot split: all images belong to one patient")
    cv = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    _, held = next(cv.split(np.zeros(len(per)), per.to_numpy().astype(int)))
    return pd.Series(groups).isin(per.index[held]).to_numpy()


def make_split(frame: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int,
               val_policy: str = "auto", label_columns: list[str] | None = None) -> tuple[pd.Series, list[str]]:
    """Assign each row of `frame` (path, patient, y, split given by the source or '') to
    train/val/test. A given test set is kept; a given val set is kept unless it is too small
    (`auto`: under 5% of train+val, like Kaggle pneumonia's 16 images) or `resplit` is asked.
    With `label_columns` (a multi-label task) and no given split, patients are stratified over every
    finding (`_multilabel_holdout`). Returns the split and notes on what was decided."""
    given = frame["split"].fillna("")
    y, groups = frame["y"].to_numpy(), frame["patient"].astype(str).to_numpy()
    notes: list[str] = []
    split = pd.Series("train", index=frame.index, dtype=object)
    if (given != "").any():
        if not (given == "test").any():  # e.g. a lone train.h5, or train/ and val/ folders only
            pool = (given != "val").to_numpy()
            held = np.flatnonzero(pool)[_grouped_holdout(y[pool], groups[pool], test_fraction, seed)]
            given = given.copy()
            given.iloc[held] = "test"
            notes.append(f"the source gives no test split: held out {len(held)} images of "
                         f"{len(np.unique(groups[held]))} patients from train as test (seeded, whole patients)")
        split[given == "test"] = "test"
        trainval = (given != "test").to_numpy()
        n_val = int((given == "val").sum())
        resplit = val_policy == "resplit" or (val_policy == "auto" and n_val < 0.05 * trainval.sum())
        if resplit:
            notes.append(f"re-split validation from train (the source's val/ had {n_val} images)")
            held = _grouped_holdout(y[trainval], groups[trainval], val_fraction / (1 - test_fraction), seed)
            split[np.flatnonzero(trainval)[held]] = "val"
        else:
            split[given == "val"] = "val"
    elif label_columns:
        labels = frame[label_columns].to_numpy(dtype=float)
        test = _multilabel_holdout(labels, groups, test_fraction, seed)
        split[test] = "test"
        rest = ~test
        val = _multilabel_holdout(labels[rest], groups[rest], val_fraction / (1 - test_fraction), seed + 1)
        split[np.flatnonzero(rest)[val]] = "val"
    else:
        test = _grouped_holdout(y, groups, test_fraction, seed)
        split[test] = "test"
        rest = ~test
        val = _grouped_holdout(y[rest], groups[rest], val_fraction / (1 - test_fraction), seed + 1)
        split[np.flatnonzero(rest)[val]] = "val"
    check_no_leak(frame["patient"], split, "the given split folders" if (frame["split"].fillna("") != "").any()
                  else "the data")
    return split, notes


def check_no_leak(patients: pd.Series, split: pd.Series, source: str = "the data") -> None:
    """A patient in two splits makes the test score optimistic: refuse it, with the fix that works
    for where the leak is (`source` names what assigned the splits)."""
    frame = pd.DataFrame({"p": patients.astype(str), "s": split})
    per_patient = frame.groupby("p")["s"].agg(lambda s: frozenset(s))
    leaked = per_patient[per_patient.map(len) > 1]
    if leaked.empty:
        return
    spans = sorted({" and ".join(sorted(s)) for s in leaked})
    if any("test" in s for s in leaked):  # re-splitting validation from train cannot move a test patient
        fix = ("Move each of these patients' images into one split folder (train, val or test), or put all "
               "images in one folder without train/val/test and let cxrlab split by patient.")
    else:
        fix = "Pass --val-policy resplit: validation is then re-split from train by patient."
    raise DataError(f"patient leakage in {source}: {len(leaked)} patient(s) appear in more than one split "
                    f"({'; '.join(spans)}; e.g. {', '.join(leaked.index[:5])}). {fix}")


def save_split(frame: pd.DataFrame, path: str | Path) -> None:
    frame[SPLIT_COLUMNS].to_csv(path, index=False)


def load_split(path: str | Path, frame: pd.DataFrame) -> pd.Series:
    """The split stored in `path`, aligned to `frame` by image path; every image must be listed."""
    try:
        saved = pd.read_csv(path, dtype={"path": str, "patient": str, "split": str})
    except Exception as exc:
        raise DataError(f"{path}: cannot read split file ({exc})") from None
    if not set(SPLIT_COLUMNS) <= set(saved.columns):
        raise DataError(f"{path}: a split file needs columns {SPLIT_COLUMNS}; found {list(saved.columns)}")
    bad = sorted(set(saved["split"]) - set(SPLITS))
    if bad:
        raise DataError(f"{path}: unknown split name(s) {bad}; use train, val, test")
    by_path = saved.set_index("path")["split"]
    missing = frame.loc[~frame["path"].isin(by_path.index), "path"]
    if len(missing):
        raise DataError(f"{path}: {len(missing)} image(s) of the data are not in the split file, "
                        f"e.g. {missing.iloc[0]}. Make a new split instead.")
    split = frame["path"].map(by_path)
    check_no_leak(frame["patient"], split, str(path))
    return split
