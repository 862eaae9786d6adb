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
# # Episode 1: Chest X-rays and the data
#
# We will train a network to tell chest X-rays with a **pleural effusion** (fluid between the lung and the
# chest wall, which blunts the angle at the base of the lung) from normal ones. Before any model, we look at
# what we have: how many images, how many *patients*, and how balanced the two classes are.
#
# This notebook runs offline on cxrlab's synthetic demo data. To use the real NIH subset, set `DATA` in the
# next cell (or run it with papermill: `papermill 01_data.ipynb out.ipynb -p DATA ../../shared/data/nih-cxr14-subset
# -p POSITIVE Effusion -p NEGATIVE "No Finding"`).

# %% tags=["parameters"]
DATA = None  # None: the demo data; or a folder / NIH CSV, e.g. "../../shared/data/nih-cxr14-subset"
POSITIVE, NEGATIVE = "effusion", "normal"  # NIH: "Effusion", "No Finding"
IMAGE_SIZE = 128  # the lesson uses 256; 128 keeps every episode within a couple of minutes on a laptop
WORK = "lesson-work"  # where the demo data, the cache and the trained run go

# %%
import cxrlab
from cxrlab.config import DataConfig
from cxrlab.demo import lesson_data

source = lesson_data(DATA, WORK)
data = cxrlab.load_data(source, positive=POSITIVE, negative=NEGATIVE,
                        config=DataConfig(image_size=IMAGE_SIZE, cache_dir=f"{WORK}/cache"))
data  # a loaded data set shows its counts per split and class, its patients, and a few images

# %% [markdown]
# `data.frame` has one row per image: its file, its labels, its patient, its split, and `y` (1 for the
# positive class). Everything else in the lesson is computed from this table and `data.images`.

# %%
data.frame.head()

# %%
images_per_patient = data.frame.groupby("patient").size()
print(f"{len(data.frame)} images from {images_per_patient.size} patients; "
      f"{(images_per_patient > 1).sum()} patients have more than one image (up to {images_per_patient.max()})")

# %% [markdown]
# ## The class balance
#
# If one class is much more common, a model that always answers it is "accurate". The **majority-class rate**
# is the accuracy of that useless model: every accuracy we report later must be compared with it.

# %%
positives = int(data.frame["y"].sum())
negatives = len(data.frame) - positives
majority = max(positives, negatives) / len(data.frame)
print(f"{POSITIVE}: {positives}, {NEGATIVE}: {negatives}; always answering the majority class is "
      f"{majority:.1%} accurate")

# %% [markdown]
# ## Exercise
#
# Why do we count *patients* and not only images? What would go wrong if two X-rays of the same patient
# ended up one in the training set and one in the test set?
#
# <details><summary>Solution</summary>
#
# Two images of one patient share anatomy, devices and often the finding itself. A model can recognise the
# patient instead of the disease, and a test image whose patient was seen in training makes the test score
# optimistic. cxrlab therefore splits by patient (episode 3), and `data.counts()` shows the patients per split.
# </details>

# %%
data.counts()
