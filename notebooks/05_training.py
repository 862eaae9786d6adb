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
# # Episode 5: Training and evaluation
#
# We train the lesson's network with the lesson's recipe (Adam at 1e-3, binary cross-entropy, the epoch with
# the best validation loss kept), then evaluate it **once** on the test patients: ROC with a confidence
# interval, the confusion matrix, a threshold chosen for a screening clinic, and the false negatives.

# %% tags=["parameters"]
DATA = None
POSITIVE, NEGATIVE = "effusion", "normal"
IMAGE_SIZE = 128
EPOCHS = 20
WORK = "lesson-work"

# %%
import matplotlib.pyplot as plt

import cxrlab
from cxrlab.data.images import read_image
from cxrlab.demo import lesson_data, lesson_run
from cxrlab.evaluation.evaluate import store_operating_point

source = lesson_data(DATA, WORK)
run = lesson_run(source, POSITIVE, NEGATIVE, IMAGE_SIZE, WORK, EPOCHS, retrain=True)
run  # the run: its best epoch, its counts, and the learning curves

# %% [markdown]
# Read the curves: the training loss keeps falling; when the validation loss stops falling and rises, the
# network has started to memorise the training images. The run keeps the weights of the best validation epoch.
#
# ## Evaluation on the test patients

# %%
evaluation = cxrlab.evaluate(run.dir.path)
evaluation

# %% [markdown]
# The interval beside each number comes from resampling **patients** 1,000 times (a patient's images go
# together). With a few dozen test patients it is wide: that width is the honest answer to "how good is it?".
#
# ## Why accuracy misleads

# %%
print(f"accuracy {evaluation['accuracy']:.3f} against the majority-class rate {evaluation['majority_rate']:.3f}; "
      f"balanced accuracy {evaluation['balanced_accuracy']:.3f}")

# %% [markdown]
# On imbalanced data a model can be "accurate" and still miss most positives. Sensitivity (positives found) and
# specificity (negatives cleared) at a stated threshold say what a clinician needs to know.
#
# ## A threshold for a screening clinic
#
# A screening clinic must miss few effusions: choose the threshold on **validation** scores so that
# sensitivity is at least 0.95, then see what it costs in specificity on test.

# %%
point = store_operating_point(run.dir.path, policy="sensitivity:0.95")
screening = cxrlab.evaluate(run.dir.path)
print(f"threshold {point.threshold:.4g}: test sensitivity {screening['sensitivity']:.3f}, "
      f"specificity {screening['specificity']:.3f} (before: {evaluation['sensitivity']:.3f} / "
      f"{evaluation['specificity']:.3f} at {evaluation['threshold']:.4g})")

# %% [markdown]
# ## The false negatives, as images

# %%
missed = screening.predictions.query("y == 1 and predicted == 0").sort_values("score")
print(f"{len(missed)} missed at the screening threshold")
shown = missed.head(6) if len(missed) else screening.predictions.query("y == 1").sort_values("score").head(6)
fig, axes = plt.subplots(1, max(len(shown), 1), figsize=(2.6 * max(len(shown), 1), 2.8), squeeze=False)
for ax, row in zip(axes[0], shown.itertuples()):
    ax.imshow(read_image(row.path, IMAGE_SIZE)[0], cmap="gray", vmin=0, vmax=255)
    ax.set_title(f"P = {row.score:.2f}", fontsize=9)
for ax in axes[0]:
    ax.axis("off")
fig.suptitle("missed positives" if len(missed) else "no positive missed: the lowest-scored positives");

# %% [markdown]
# ## Exercise
#
# Choose the threshold by Youden's J instead (`policy="youden"`), evaluate again, and compare the two
# confusion matrices. Which would you deploy in a screening clinic, and which in a clinic that confirms a
# suspected effusion before draining it?
#
# <details><summary>Solution</summary>
#
# ```python
# store_operating_point(run.dir.path, policy="youden")
# cxrlab.evaluate(run.dir.path)
# ```
# Youden's J balances sensitivity and specificity. Screening favours sensitivity (a missed effusion is worse
# than a second look); confirming before an invasive procedure favours specificity.
# </details>
