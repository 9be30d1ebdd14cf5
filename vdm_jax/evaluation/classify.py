r"""A class-conditional VDM's bounds and its ELBO classifier, on a labelled split.

For each example x with label y and each class c in {0..C-1} (and the null label C), the
ELBO terms are computed with the same key, so the same t, z_0 and noise for every label:
the comparison between labels is paired, and its noise largely cancels. `classify` takes
these totals from `bpd.evaluate` (stratified times, one pass), so its bounds are the plain
evaluation's; `label_totals` is the same computation for one batch, pure, for use under
jit (each example's own random t). From the per-label
totals L_c(x) = -ELBO_c(x) (nats), with the uniform prior p(c) = 1/C:

* conditional bound: -log p(x | y) <= L_y(x);
* marginal bound: -log p(x) = -log sum_c p(c) p(x | c) <= -log sum_c p(c) exp(-L_c(x))
  (since p(x | c) >= exp(-L_c(x))): the headline bits/dim, comparable with unconditional
  models;
* null bound: L_C(x), the bound of the unconditional sub-model the null label selects;
* classifier: p(c | x) is proportional to p(x | c) p(c); with each p(x | c) replaced by its
  bound the prediction is argmin_c L_c(x). Its accuracy is a mean of N independent 0/1
  outcomes, with standard error sqrt(a (1 - a) / N).

Nothing depends on the batch an example falls in (batch- and device-invariant).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import data
from vdm_jax.evaluation import bpd
from vdm_jax.runtime import storage

__all__ = ["classify", "classify_checkpoint", "label_totals", "render", "summarize_labels"]


def label_totals(params, batch: dict, key, *, model, num_steps: int) -> jax.Array:
  """Total nats `[B, C + 1]` of each example under each label 0..C (C: the null label).

  Pure; jit it. Every label of example n uses the key `fold_in(key, batch["index"][n])`.

  Args:
    batch: {"image": int `[B, *data_shape]`, "index": int32 `[B]`, ...}.
    model: a class-conditional VDM (`model.num_classes` = C > 0).
  """
  labels = jnp.arange(model.num_classes + 1, dtype=jnp.int32)

  def one(image, index):
    example_key = jax.random.fold_in(key, index)

    def under(label):
      example = {"image": image[None], "label": label[None]}
      return model.loss_terms(params, example, example_key, num_steps=num_steps)["total"][0]

    return jax.vmap(under)(labels)

  return jax.vmap(one)(batch["image"], batch["index"])


def summarize_labels(totals: np.ndarray, labels: np.ndarray, num_dims: int) -> dict:
  """The bounds (bits/dim, with standard errors) and the classifier from per-label totals.

  Args:
    totals: nats `[N, C + 1]`, column C the null label's.
    labels: the true labels `[N]`.
    num_dims: D, for bits/dim.

  Returns:
    dict: "bpd" (the marginal bound), "bpd_conditional", "bpd_null" (each with "_se"),
    "accuracy", "accuracy_se", "confusion" (`[C, C]` counts, row = true label, column =
    predicted), "num_examples", "num_classes", "label_prior" (`bpd.label_bounds`).

  Example (two classes; the first example is better explained by class 0):
    >>> t = np.array([[10.0, 12.0, 11.0], [9.0, 8.0, 8.5]])
    >>> s = summarize_labels(t, np.array([0, 0]), num_dims=1)
    >>> s["accuracy"], s["confusion"]
    (0.5, [[1, 1], [0, 0]])
  """
  totals = np.asarray(totals, np.float64)
  labels = np.asarray(labels)
  out = bpd.label_bounds(totals, labels, num_dims)
  n, num_classes = totals.shape[0], out["num_classes"]
  predicted = np.argmin(totals[:, :num_classes], axis=1)
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (labels, predicted), 1)
  accuracy = float(np.mean(predicted == labels))
  return out | {
    "accuracy": accuracy,
    "accuracy_se": math.sqrt(accuracy * (1.0 - accuracy) / n),
    "confusion": confusion.tolist(),
    "num_examples": int(n),
  }


def classify(
  model,
  params,
  config,
  mesh,
  *,
  split: str = "test",
  num_steps: int | None = None,
  key=None,
  batch_size: int | None = None,
  progress: bool = False,
  passes: int = 1,
) -> dict:
  """`summarize_labels` over a labelled split, plus the per-label totals ("totals" `[N,
  C + 1]`, nats, in the split's order, the mean over `passes` passes) and "labels" `[N]`.

  Raises ValueError for a model that is not class-conditional or an unlabelled dataset.
  """
  if not getattr(model, "num_classes", 0):
    raise ValueError(
      "The ELBO classifier needs a class-conditional model (config.model.conditional=True); "
      "this one is not."
    )
  info = data.dataset_info(config.data)
  if info.num_classes != model.num_classes:
    raise ValueError(
      f"The model has {model.num_classes} classes; dataset {info.name!r} has "
      f"{info.num_classes or 'no'} labels."
    )
  num_steps = config.loss.num_steps if num_steps is None else num_steps
  # The per-label totals of the plain evaluation (same times, noise and bounds): --classify
  # and vdm-evaluate report the same bits/dim for the same seed.
  evaluated = bpd.evaluate(
    model,
    params,
    config,
    mesh,
    split=split,
    num_steps=num_steps,
    key=key,
    batch_size=batch_size,
    progress=progress,
    passes=passes,
  )
  totals, labels = evaluated["_per_label"], evaluated["_labels"]
  result = summarize_labels(totals, labels, model.num_dims)
  # The marginal bound as the plain evaluation estimates it (label weights from held-out
  # draws, bpd.held_out_marginal_nats: the log-sum-exp of the totals' Monte Carlo means is
  # biased low).
  result |= {k: evaluated[k] for k in ("bpd", "bpd_se", "pass_bpd", "pass_se", "marginal_weights")}
  return result | {
    "totals": totals,
    "labels": labels,
    "split": split,
    "num_steps": num_steps,
    "passes": passes,
  }


def render(result: dict) -> str:
  """The bounds, the accuracy and the confusion table as text."""
  se = lambda name: f"{result[name]:.4f} +- {result[name + '_se']:.4f}"
  lines = [
    f"{result['split']} ({result['num_examples']} examples), T={result['num_steps']}, "
    f"{result['passes']} pass(es):",
    f"  bpd (marginal bound, -log sum_y p(y) exp ELBO_y): {se('bpd')}",
    f"    label weights (held out):                       {result['marginal_weights']}",
    f"  conditional bound -log p(x | y):                 {se('bpd_conditional')}",
    f"  null-label bound:                                {se('bpd_null')}",
    f"  ELBO classifier accuracy: {result['accuracy']:.4f} +- {result['accuracy_se']:.4f}",
    "  confusion (row: true label, column: predicted):",
    "       " + " ".join(f"{c:>4d}" for c in range(result["num_classes"])),
  ]
  for y, row in enumerate(result["confusion"]):
    lines.append(f"  {y:>4d} " + " ".join(f"{v:>4d}" for v in row))
  return "\n".join(lines)


def classify_checkpoint(
  run,
  *,
  split: str = "test",
  num_steps: int | None = None,
  batch_size: int | None = None,
  seed: int | None = None,
  output: str | None = None,
  passes: int = 1,
) -> dict:
  """`classify` on a loaded checkpoint (`runs.load_run`), written as JSON (without the
  per-example arrays) to `output` (default: in the work directory) on process 0; returns
  that JSON dict, whose "files" names what was written. Prints nothing (`render`)."""
  from vdm_jax.runtime import workdir as workdir_lib

  config = run.config
  data.lookup(config.data).check_split(split)
  seed = bpd.evaluation_seed(config, seed)
  result = classify(
    run.model,
    run.params,
    config,
    run.mesh,
    split=split,
    num_steps=num_steps,
    key=jax.random.key(seed),
    batch_size=batch_size,
    progress=True,
    passes=passes,
  )
  public = {k: v for k, v in result.items() if k not in ("totals", "labels")}
  output = output or storage.join(
    run.workdir, f"classify_{split}_step{run.step}_T{result['num_steps']}_P{passes}.json"
  )
  public |= {"checkpoint_step": run.step, "data": config.data.name, "seed": seed}
  public = workdir_lib.to_strict_json(public)
  if jax.process_index() == 0:
    public["files"] = {"JSON": output}
    storage.makedirs(storage.dirname(storage.resolve(output)))
    workdir_lib.write_json_atomic(output, workdir_lib.dumps_strict(public, indent=2))
  else:
    public["files"] = {}
  return public
