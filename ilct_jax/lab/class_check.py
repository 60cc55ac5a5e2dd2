"""Does a class-conditional digits run draw the classes it is asked for?

  python -m ilct_jax.lab.class_check --workdir=/tmp/ilct_dit [--num=100]

Fits a ridge-regression classifier (pixels -> one-hot class, closed form) to
the built-in digits at the run's image size, reports its accuracy on digits
it was not fitted to, then samples `--num` images of every class with the
run's sampling EMA and guidance (sample.cfg_scale) through each sampler and
prints the share of them classified as the class they were asked for.
Chance is 10%; the classifier's held-out accuracy bounds what it can see.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import numpy as np
from absl import app, flags

from ilct_jax import rng, run_config, runs, sampling
from ilct_jax.data import digits
from ilct_jax.evaluation import write_samples

HELD_OUT = 297  # The last digits, never fitted (1,500 fit, 297 held out).
RIDGE = 10.0


def fit(images: np.ndarray, labels: np.ndarray, classes: int = 10):
  """Ridge regression of one-hot labels on [pixels, 1]: the weights."""
  x = np.concatenate(
    [images.reshape(len(images), -1), np.ones((len(images), 1))], 1
  )
  y = np.eye(classes)[labels]
  gram = x.T @ x + RIDGE * np.eye(x.shape[1])
  return np.linalg.solve(gram, x.T @ y)


def predict(weights: np.ndarray, images: np.ndarray) -> np.ndarray:
  x = images.reshape(len(images), -1)
  return np.argmax(x @ weights[:-1] + weights[-1], axis=1)


def classifier(image_size: int) -> tuple[np.ndarray, float]:
  """(weights, held-out accuracy) on the digits at `image_size`."""
  images, labels = digits.load_digits(image_size), digits.load_labels()
  weights = fit(images[:-HELD_OUT], labels[:-HELD_OUT])
  held = predict(weights, images[-HELD_OUT:]) == labels[-HELD_OUT:]
  return weights, float(held.mean())


def class_accuracy(
  workdir: str, num: int, cfg_scale: float | None = None
) -> dict[str, np.ndarray]:
  """{sampler: [10] share of class-k samples classified as k}, guided by
  `cfg_scale` (None: the run's sample.cfg_scale)."""
  run = runs.load_run(workdir, what="ema")
  config = run.config
  if cfg_scale is not None:
    config.sample.cfg_scale = cfg_scale
  if config.data.source != "digits" or not config.model.get("num_classes"):
    raise ValueError(
      f"{workdir} is not a class-conditional digits run (data.source="
      f"{config.data.source}, model.num_classes="
      f"{config.model.get('num_classes', 0)})"
    )
  weights, _ = classifier(config.data.image_size)
  base = jax.random.fold_in(rng.stream(config.seed, "sample"), 2**20)
  out = {}
  for s, (name, sigmas) in enumerate(sampling.samplers(config).items()):
    hits = np.zeros(config.model.num_classes)
    for k in range(config.model.num_classes):
      config.sample.label = k
      key = jax.random.fold_in(jax.random.fold_in(base, s), k)
      x = write_samples.sample_data(config, run.params, key, num, sigmas)
      hits[k] = np.mean(predict(weights, np.asarray(x)) == k)
    out[name] = hits
  return out


def main(argv) -> None:
  del argv
  f = flags.FLAGS
  config = run_config.read_config(f.workdir)
  _, held = classifier(config.data.image_size)
  print(f"classifier: {100 * held:.1f}% of {HELD_OUT} held-out digits")
  scale = f.cfg_scale if f.cfg_scale >= 0 else None
  for name, hits in class_accuracy(f.workdir, f.num, scale).items():
    per = " ".join(f"{k}:{100 * h:.0f}%" for k, h in enumerate(hits))
    print(f"{name}: {100 * hits.mean():.1f}% as asked ({per})")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "A class-conditional digits run.")
  flags.DEFINE_integer("num", 100, "Samples per class and sampler.")
  flags.DEFINE_float("cfg_scale", -1.0, "Guidance (-1: the run's).")
  flags.mark_flag_as_required("workdir")
  app.run(main)
