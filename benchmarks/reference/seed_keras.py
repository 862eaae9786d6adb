"""The seed lesson's own Keras pipeline, the reference side of benchmarks/speed.py.

It runs in its own virtual environment with TensorFlow (`make bench-env`, the `[bench]` extra) and
imports nothing from cxrlab. What it does is what the lesson does: read each PNG with PIL, grayscale,
resize to 256 x 256, per-image standardisation, the lesson's CNN (seven convs, global average pooling,
Dense 128, Dropout 0.6, Dense 32, sigmoid), Adam 1e-3, binary cross-entropy, batch 16, 10 epochs, keep
the best val-loss weights (ModelCheckpoint), predict the test images.

Modes (each prints one JSON line):
  train-throughput  steady-state training images/s on random data
  inference         batch-64 images/s and single-image latency p50/p99 (ms)
  workflow          the whole lesson on a split CSV (path, y, split): wall seconds per stage, test AUC
  load              only the lesson's image loading for that split CSV: wall seconds
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow import keras  # noqa: E402
from tensorflow.keras import layers  # noqa: E402

SIZE = 256


def lesson_model(size: int = SIZE) -> keras.Model:
    """The lesson's network: 54,627 parameters at 256 x 256 x 1."""
    model = keras.Sequential([keras.Input((size, size, 1))])
    convs = [(8, 3), (8, 3), (12, 3), (12, 3), (20, 5), (20, 5), (50, 5)]
    for i, (filters, kernel) in enumerate(convs):
        model.add(layers.Conv2D(filters, kernel, padding="same", activation="relu"))
        if i < len(convs) - 1:
            model.add(layers.MaxPooling2D(2))
    model.add(layers.GlobalAveragePooling2D())
    model.add(layers.Dense(128, activation="relu"))
    model.add(layers.Dropout(0.6))
    model.add(layers.Dense(32, activation="relu"))
    model.add(layers.Dense(1, activation="sigmoid"))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", metrics=["accuracy"])
    return model


def train_throughput(steps: int, batch: int) -> dict:
    model = lesson_model()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((steps * batch, SIZE, SIZE, 1), dtype=np.float32)
    y = rng.integers(0, 2, steps * batch).astype(np.float32)
    model.fit(x[: 3 * batch], y[: 3 * batch], batch_size=batch, epochs=1, verbose=0)  # build and trace
    t = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    return {"train_img_s": steps * batch / (time.perf_counter() - t), "parameters": model.count_params()}


def inference(batches: int, batch: int, singles: int) -> dict:
    model = lesson_model()
    x = np.random.default_rng(0).standard_normal((batches * batch, SIZE, SIZE, 1), dtype=np.float32)
    model.predict(x[:batch], batch_size=batch, verbose=0)
    t = time.perf_counter()
    model.predict(x, batch_size=batch, verbose=0)
    batch_rate = batches * batch / (time.perf_counter() - t)
    one = tf.constant(x[:1])
    model(one, training=False)  # a direct call: faster than predict() for one image
    lat = []
    for _ in range(singles):
        t = time.perf_counter()
        model(one, training=False).numpy()
        lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    return {"infer_img_s": batch_rate, "latency_p50_ms": lat[len(lat) // 2],
            "latency_p99_ms": lat[max(0, int(len(lat) * 0.99) - 1)]}


def load_images(paths) -> np.ndarray:
    """The lesson's loading: PIL, grayscale, resize, per-image standardisation, one image at a time."""
    from PIL import Image

    out = np.empty((len(paths), SIZE, SIZE, 1), np.float32)
    for i, path in enumerate(paths):
        img = np.asarray(Image.open(path).convert("L").resize((SIZE, SIZE)), np.float32)
        out[i, ..., 0] = (img - img.mean()) / max(img.std(), 1.0 / SIZE)  # tf.image.per_image_standardization
    return out


def workflow(split_csv: str, epochs: int, batch: int, workdir: str, seed: int = 0) -> dict:
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    keras.utils.set_random_seed(seed)
    split = pd.read_csv(split_csv)
    t0 = time.perf_counter()
    data = {s: load_images(split.loc[split["split"] == s, "path"].tolist()) for s in ("train", "val", "test")}
    labels = {s: split.loc[split["split"] == s, "y"].to_numpy(np.float32) for s in ("train", "val", "test")}
    t_load = time.perf_counter()
    model = lesson_model()
    best = os.path.join(workdir, "best.weights.h5")
    model.fit(data["train"], labels["train"], batch_size=batch, epochs=epochs, verbose=0,
              validation_data=(data["val"], labels["val"]),
              callbacks=[keras.callbacks.ModelCheckpoint(best, monitor="val_loss", save_best_only=True,
                                                         save_weights_only=True)])
    t_train = time.perf_counter()
    model.load_weights(best)
    scores = model.predict(data["test"], batch_size=64, verbose=0).reshape(-1)
    t_pred = time.perf_counter()
    return {"load_s": t_load - t0, "train_s": t_train - t_load, "predict_s": t_pred - t_train,
            "wall_s": t_pred - t0, "test_auc": float(roc_auc_score(labels["test"], scores)),
            "n_train": len(labels["train"]), "n_test": len(labels["test"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["train-throughput", "inference", "workflow", "load", "versions"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--singles", type=int, default=100)
    ap.add_argument("--split", help="workflow: a split CSV with path, y, split columns")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--workdir", default=".")
    ap.add_argument("--seed", type=int, default=0, help="workflow: the training seed")
    args = ap.parse_args()
    if args.mode == "train-throughput":
        result = train_throughput(args.steps, args.batch)
    elif args.mode == "inference":
        result = inference(args.batches, 64, args.singles)
    elif args.mode == "load":
        import pandas as pd

        t = time.perf_counter()
        n = len(load_images(pd.read_csv(args.split)["path"].tolist()))
        result = {"load_s": time.perf_counter() - t, "n": n}
    elif args.mode == "workflow":
        result = workflow(args.split, args.epochs, args.batch, args.workdir, args.seed)
    else:
        result = {}
    result["versions"] = {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__}
    result["threads"] = {"intra": tf.config.threading.get_intra_op_parallelism_threads(),
                         "inter": tf.config.threading.get_inter_op_parallelism_threads()}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
