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
# # Episode 7: Human against model
#
# You see test X-rays one at a time and answer "effusion" or "normal". The network answers the same images at
# its stored threshold (the same probability `cxrlab predict` and the web page give). After a round, compare:
# who found more effusions, who cleared more normals?

# %% tags=["parameters"]
DATA = None
POSITIVE, NEGATIVE = "effusion", "normal"
IMAGE_SIZE = 128
WORK = "lesson-work"
ROUND = 10  # images per round

# %%
import io

import ipywidgets as widgets
import numpy as np
from IPython.display import display
from PIL import Image

from cxrlab.demo import lesson_data, lesson_run
from cxrlab.inference import RunModel

run = lesson_run(lesson_data(DATA, WORK), POSITIVE, NEGATIVE, IMAGE_SIZE, WORK)
model = RunModel.load(run.dir.path)
test = model.score_data(model.own_data(), "test")  # path, patient, y, score: the model's answers
rng = np.random.default_rng()
quiz = test.iloc[rng.permutation(len(test))[:ROUND]].reset_index(drop=True)
quiz["model"] = (quiz["score"] >= model.threshold).astype(int)
answers: list[int] = []


def png(path) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(model.read(path)).resize((320, 320)).save(buffer, format="PNG")
    return buffer.getvalue()


picture = widgets.Image(value=png(quiz.loc[0, "path"]), width=320, height=320)
status = widgets.HTML(f"image 1 of {len(quiz)}")


def answer(y: int):
    def click(_):
        if len(answers) >= len(quiz):
            return
        answers.append(y)
        if len(answers) < len(quiz):
            picture.value = png(quiz.loc[len(answers), "path"])
            status.value = f"image {len(answers) + 1} of {len(quiz)}"
        else:
            status.value = "round over: run the next cell"
    return click


buttons = [widgets.Button(description=POSITIVE), widgets.Button(description=NEGATIVE)]
buttons[0].on_click(answer(1))
buttons[1].on_click(answer(0))
display(widgets.VBox([picture, widgets.HBox(buttons), status]))

# %% [markdown]
# ## The score

# %%
def rates(truth: np.ndarray, said: np.ndarray) -> str:
    pos, neg = truth == 1, truth == 0
    sens = (said[pos] == 1).mean() if pos.any() else float("nan")
    spec = (said[neg] == 0).mean() if neg.any() else float("nan")
    return f"accuracy {(said == truth).mean():.2f}, sensitivity {sens:.2f}, specificity {spec:.2f}"


done = quiz.iloc[: len(answers)]
if len(done):
    truth = done["y"].to_numpy()
    print(f"you, on {len(done)} images:   {rates(truth, np.array(answers))}")
    print(f"the model, same images: {rates(truth, done['model'].to_numpy())}")
else:
    print("no answers yet: click through the round above, then run this cell")
truth = quiz["y"].to_numpy()
print(f"the model on the whole round ({len(quiz)} images): {rates(truth, quiz['model'].to_numpy())}; "
      f"always answering '{NEGATIVE}' would score accuracy {(truth == 0).mean():.2f}")

# %% [markdown]
# ## Discussion
#
# Ten images say little: how wide would a 95% interval around your accuracy be? (Episode 5's bootstrap answers
# that for the model.) Which images did you and the model both get wrong, and what do they have in common?
