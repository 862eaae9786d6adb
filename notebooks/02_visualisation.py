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
# # Episode 2: Visualisation
#
# An X-ray is an array of numbers. Here we look at images side by side, at one image as a NumPy array, at the
# distribution of grey levels in each class, and at the sizes of the original files.

# %% tags=["parameters"]
DATA = None
POSITIVE, NEGATIVE = "effusion", "normal"
IMAGE_SIZE = 128
WORK = "lesson-work"

# %%
import matplotlib.pyplot as plt
import numpy as np

import cxrlab
from cxrlab.config import DataConfig
from cxrlab.demo import lesson_data

data = cxrlab.load_data(lesson_data(DATA, WORK), positive=POSITIVE, negative=NEGATIVE,
                        config=DataConfig(image_size=IMAGE_SIZE, cache_dir=f"{WORK}/cache"))
data.plot(per_class=6)  # a row of random images per class

# %% [markdown]
# ## One image as an array

# %%
first = data.frame.iloc[0]
image = data.images[first["row"]]
print(f"{first['path']}\nshape {image.shape}, dtype {image.dtype}, grey levels {image.min()}..{image.max()}, "
      f"mean {image.mean():.1f}")
plt.imshow(image, cmap="gray", vmin=0, vmax=255)
plt.title(f"y = {first['y']}")
plt.axis("off");

# %% [markdown]
# ## Grey levels per class
#
# Effusion is fluid, which absorbs X-rays like soft tissue: the base of the affected lung turns brighter. Is that
# visible in the histogram of whole images?

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for y, name in ((0, NEGATIVE), (1, POSITIVE)):
    rows = data.frame.loc[data.frame["y"] == y, "row"].to_numpy()
    ax.hist(data.images[rows].ravel(), bins=64, density=True, histtype="step", label=name)
ax.set(xlabel="grey level", ylabel="density", title="all pixels, per class")
ax.legend();

# %% [markdown]
# ## Image sizes
#
# cxrlab resizes every image to `IMAGE_SIZE` square (and caches the result); `data.info` keeps each file's
# original size and mode.

# %%
data.info[["width", "height", "mode"]].value_counts().head()

# %% [markdown]
# ## Exercise
#
# Show the lower third of five positive images next to five negatives. Can *you* see the effusion?
#
# <details><summary>Solution</summary>
#
# ```python
# fig, axes = plt.subplots(2, 5, figsize=(12, 3))
# for r, y in enumerate((1, 0)):
#     rows = data.frame.loc[data.frame["y"] == y, "row"].to_numpy()[:5]
#     for ax, row in zip(axes[r], rows):
#         ax.imshow(data.images[row][2 * IMAGE_SIZE // 3:], cmap="gray", vmin=0, vmax=255)
#         ax.axis("off")
# ```
# </details>
