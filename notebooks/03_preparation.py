# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Episode 3: Data preparation
#
# Three steps before training: every image to one size and one intensity scale, the patients divided into
# training, validation and test sets, and random augmentation of the training images.

# %% tags=["parameters"]
DATA = None
POSITIVE, NEGATIVE = "effusion", "normal"
IMAGE_SIZE = 128
WORK = "lesson-work"

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

import cxrlab
from cxrlab.config import AugmentConfig, DataConfig
from cxrlab.data.augment import build_augment
from cxrlab.data.preprocess import normalize
from cxrlab.demo import lesson_data

config = DataConfig(image_size=IMAGE_SIZE, cache_dir=f"{WORK}/cache", split_scheme="lesson")
data = cxrlab.load_data(lesson_data(DATA, WORK), positive=POSITIVE, negative=NEGATIVE, config=config)

# %% [markdown]
# ## Resizing and standardisation
#
# The images are already `IMAGE_SIZE` pixels square (resized once, then cached). The lesson standardises each
# image to zero mean and unit variance, so that exposure differences between X-rays matter less.

# %%
batch = torch.from_numpy(data.images[:8]).unsqueeze(1)  # 8 x 1 x S x S, uint8
standard = normalize(batch, "standardize")
print(f"before: mean {batch.float().mean():.1f}, std {batch.float().std():.1f}")
print(f"after, per image: mean {standard.mean(dim=(1, 2, 3)).abs().max():.2e} (largest |mean|), "
      f"std {standard.std(dim=(1, 2, 3)).mean():.3f}")

# %% [markdown]
# ## The split, by patient
#
# `split_scheme="lesson"` holds out 15% for test, then 15% of the rest for validation, **grouping by patient**:
# all images of one patient land in one split. Validation chooses the epoch and the threshold; test is looked
# at once, at the end.

# %%
split_of_patient = data.frame.groupby("patient")["split"].nunique()
print(f"patients in more than one split: {(split_of_patient > 1).sum()}")
data.counts()

# %% [markdown]
# ## Augmentation
#
# Small random rotations, shifts, zooms, shears and brightness/contrast changes make each epoch's training
# images a little different, which helps a small data set. No horizontal flip: a flipped chest X-ray puts the
# heart on the wrong side.

# %%
augment = build_augment(AugmentConfig(enabled=True))
torch.manual_seed(0)
original = torch.from_numpy(np.array(data.images[data.indices("train")[0]])).unsqueeze(0)
fig, axes = plt.subplots(1, 6, figsize=(13, 2.6))
axes[0].imshow(original[0], cmap="gray", vmin=0, vmax=255)
axes[0].set_title("original")
for ax in axes[1:]:
    ax.imshow(augment(original)[0], cmap="gray", vmin=0, vmax=255)
    ax.set_title("augmented")
for ax in axes:
    ax.axis("off")

# %% [markdown]
# ## Exercise
#
# Prove that no patient of the test set appears in the training set, with one line of pandas.
#
# <details><summary>Solution</summary>
#
# ```python
# train = set(data.frame.loc[data.frame["split"] == "train", "patient"])
# test = set(data.frame.loc[data.frame["split"] == "test", "patient"])
# assert not train & test
# ```
# </details>
