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
# # Episode 6: Explainability
#
# Saliency maps highlight where a layer's evidence for "effusion" lies. The lesson compares **Grad-CAM++**
# (gradients of the score) with **Score-CAM** (how the score changes when each feature map masks the image),
# then asks whether the maps can be trusted at all: the *sanity check* randomises the network's weights layer by
# layer, and a map that does not change was never about the model.

# %% tags=["parameters"]
DATA = None
POSITIVE, NEGATIVE = "effusion", "normal"
IMAGE_SIZE = 128
WORK = "lesson-work"

# %%
import cxrlab
from cxrlab.demo import lesson_data, lesson_run
from cxrlab.saliency import representative_images, sanity_check

run = lesson_run(lesson_data(DATA, WORK), POSITIVE, NEGATIVE, IMAGE_SIZE, WORK)  # episode 5's run (trained if absent)
images, how = representative_images(run.dir.path, 4)
print(how)
maps = cxrlab.explain(run.dir.path, images, ["gradcam++", "scorecam"])
maps

# %% [markdown]
# ## Do the maps depend on the model?
#
# Cascading randomisation (Adebayo et al., 2018): the layers are re-initialised from the top down, and after
# each step the maps are compared with the trained model's. A trustworthy method's maps move away quickly
# (low rank correlation); a method whose maps survive randomisation shows the image, not the model.

# %%
table, verdicts = sanity_check(run.dir.path, images, ["gradcam++", "scorecam"])
verdicts

# %%
table.head(8)

# %% [markdown]
# ## Discussion
#
# - Where do the two methods agree, and where not? Which would you show to a radiologist, and with what caveat?
# - A map at the last convolution is coarse (see its resolution above): what is the smallest effusion it could
#   outline?
# - A plausible map is not proof: the model could still rely on a marker or the patient's position. What
#   experiment would convince you it uses the fluid?
#
# ## Exercise
#
# Explain the same images with `layercam` at an earlier layer (`target_layer="features.10"`). Are the maps
# finer? Do they still pass the sanity check?
#
# <details><summary>Solution</summary>
#
# ```python
# cxrlab.explain(run.dir.path, images, ["layercam"], target_layer="features.10")
# sanity_check(run.dir.path, images, ["layercam"], target_layer="features.10")[1]
# ```
# </details>
