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
# # Episode 4: Neural networks
#
# The lesson's network, layer by layer: seven convolutions that learn local patterns, max-pooling that halves
# the image between them, global average pooling, and a small dense head that ends in one number, the logit
# of "effusion". cxrlab builds it in PyTorch as `seed-cnn`; `seed-cnn-bn` adds batch normalisation after each
# convolution.

# %% tags=["parameters"]
IMAGE_SIZE = 128

# %%
import torch

from cxrlab.models import count_parameters, create_model
from cxrlab.models.registry import ModelSpec

model = create_model(ModelSpec("seed-cnn", image_size=IMAGE_SIZE))
print(model)
print(f"\n{count_parameters(model):,} parameters")

# %% [markdown]
# ## What each layer does to the shape of one image

# %%
x = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)
print(f"{'input':<28} {tuple(x.shape)}")
for name, layer in model.features.named_children():
    x = layer(x)
    params = sum(p.numel() for p in layer.parameters())
    print(f"{name + ' ' + type(layer).__name__:<28} {tuple(x.shape)}  {params:>6} parameters")
x = model.pool(x)
print(f"{'global average pool':<28} {tuple(x.shape)}")
print(f"{'head (dense layers)':<28} {tuple(model.head(x).shape)}  {count_parameters(model.head):>6} parameters")

# %% [markdown]
# The network ends in one **logit** `z`; the probability of effusion is `sigmoid(z) = 1 / (1 + exp(-z))`. The
# pooling before the head makes the network accept any image size.
#
# ## The batch-norm variant

# %%
bn = create_model(ModelSpec("seed-cnn-bn", image_size=IMAGE_SIZE))
print(f"seed-cnn-bn: {count_parameters(bn):,} parameters "
      f"({count_parameters(bn) - count_parameters(model):+,} against seed-cnn: BN's scale and shift per channel, "
      "minus the convolutions' biases it makes redundant)")
with torch.no_grad():
    print("P(effusion) of a random image, untrained:", torch.sigmoid(bn.eval()(torch.randn(1, 1, IMAGE_SIZE, IMAGE_SIZE))).item())

# %% [markdown]
# ## Exercise
#
# How many parameters does the first convolution have? Work it out by hand, then check it.
#
# <details><summary>Solution</summary>
#
# 8 filters of 3 x 3 weights on 1 input channel, plus one bias each: 8 x (3 x 3 x 1) + 8 = 80.
#
# ```python
# sum(p.numel() for p in model.features[0].parameters())
# ```
# </details>
