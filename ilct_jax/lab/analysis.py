"""The paper's diagnostic figures from data and runs: Fig. 1 and Fig. 4.

Owns the outlier statistics (Pearson kurtosis, tail fractions beyond k
standard deviations, the Gaussian tail), per-sample TD residuals of a
checkpoint at chosen noise levels, the c(N)-versus-residual table of the
curriculum stages (ALGORITHM.md §6) and their plots. The files it reads
come through run_files.py (config files, TensorBoard scalars, arrays).

  python -m ilct_jax.lab.analysis fig1 --source=digits          # pixels
  python -m ilct_jax.lab.analysis fig1 --source=latents \
      --config=configs/celeba.py
  python -m ilct_jax.lab.analysis fig1 --npz=FILE [--key=NAME]  # any array
  python -m ilct_jax.lab.analysis fig1 --workdir=WORKDIR        # TD residuals
  python -m ilct_jax.lab.analysis fig4 WORKDIR                  # c(N) vs td_std

Fig. 1: latents have impulsive outliers (kurtosis far above 3), pixels not.
Fig. 4: c(N) follows the scale of the TD residual f(x_t, t) - f(x_r, r).
"""

import copy
import io
import logging as logging_std
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags

from ilct_jax import (
  cli,
  consistency,
  parallel,
  run_config,
  runs,
  storage,
)
from ilct_jax import state as state_lib
from ilct_jax.data import digits, latents, tfds_images
from ilct_jax.lab.run_files import (
  draw_rows,
  load_npz,
  load_source,
  read_scalars,
)

KS = (3.0, 4.0, 5.0)  # Tail thresholds, in standard deviations.
FIT = (consistency.C_FIT_SLOPE, consistency.C_FIT_INTERCEPT)
Rows = list[dict[str, Any]]

# ------------------------------------------------------------ statistics


def kurtosis(x: Any, axis: int | None = None) -> np.ndarray:
  """Pearson kurtosis E[(x - mu)^4] / var^2: normal 3, Laplace 6, flat NaN."""
  x = np.asarray(x, np.float64)
  if x.size == 0:
    raise ValueError("statistics of an empty array are undefined")
  d = x - x.mean(axis=axis, keepdims=True)
  m2, m4 = (d**2).mean(axis=axis), (d**4).mean(axis=axis)
  with np.errstate(divide="ignore", invalid="ignore"):
    return m4 / m2**2


def standardize(x: Any, axis: int | None = None) -> np.ndarray:
  """(x - mean) / std along `axis` (float64; constant data become 0)."""
  x = np.asarray(x, np.float64)
  std = x.std(axis=axis, keepdims=True)
  return (x - x.mean(axis=axis, keepdims=True)) / np.where(std > 0, std, 1.0)


def tail_fractions(x: Any, ks: Sequence[float] = KS) -> np.ndarray:
  """Fraction of values farther than k standard deviations from the mean."""
  z = np.abs(standardize(np.ravel(x)))
  return np.array([np.mean(z > k) for k in ks])


def gaussian_tail(k: float) -> float:
  """P(|Z| > k) for a standard normal Z: 2 (1 - Phi(k)) = erfc(k / sqrt 2)."""
  return math.erfc(k / math.sqrt(2.0))


def outlier_table(x: Any, ks: Sequence[float] = KS) -> Rows:
  """{"name", "kurtosis", "tails"} per channel (last axis), then all pooled."""
  x = np.asarray(x, np.float64)
  z = standardize(x.reshape(-1, x.shape[-1] if x.ndim > 1 else 1), axis=0)
  parts = [(str(c), z[:, c]) for c in range(z.shape[1])]
  parts += [("all", z)] if z.shape[1] > 1 else []
  return [
    {"name": n, "kurtosis": float(kurtosis(v)), "tails": tail_fractions(v, ks)}
    for n, v in parts
  ]


def format_outlier_table(rows: Rows, ks: Sequence[float] = KS) -> str:
  """The table of outlier_table rows, with the Gaussian expectation last."""
  gauss = {"name": "gaussian", "kurtosis": 3.0, "tails": map(gaussian_tail, ks)}
  lines = [f"{'channel':>10} {'kurtosis':>9}"]
  lines[0] += "".join(f" {f'>{k:g} std':>10}" for k in ks)
  for r in [*rows, gauss]:
    tails = "".join(f" {t:>10.3g}" for t in r["tails"])
    lines.append(f"{r['name']:>10} {r['kurtosis']:>9.3f}{tails}")
  return "\n".join(lines)


# ------------------------------------------------------------ residuals


def run_data(
  config: ml_collections.ConfigDict, num: int, seed: int = 0
) -> np.ndarray:
  """`num` random training examples x0 of a run's dataset."""
  d = config.data
  if d.source == "digits":
    return draw_rows(digits.load_digits(d.image_size), num, seed)
  if d.source == "latents":
    return draw_rows(latents.open_latents(config), num, seed)
  return draw_rows(tfds_images.make_array(config, d.image_size), num, seed)


def td_residuals(
  config: ml_collections.ConfigDict,
  params: Any,
  x0: np.ndarray,
  num_scales: int,
  indices: Sequence[int],
  *,
  seed: int = 0,
  batch: int = 64,
) -> Rows:
  """Per-sample mean squared TD residual at grid indices of N levels.

  m = mean((f(x0 + t z, t) - f(x0 + r z, r))^2) per sample, with
  t = sigma_i and r = sigma_{i+1} of the Karras grid of `num_scales` levels,
  one z for both, f the consistency function of `params` (eval mode). Unlike
  the train step, z is not OT-paired with x0.

  Returns:
    One {"index", "t", "r", "m" [B]} per index.
  """
  ct, n = config.ct, int(num_scales)
  if not indices or min(indices) < 0 or max(indices) > n - 2:
    raise ValueError(f"sigma indices must lie in 0..{n - 2} for N = {n}")
  grid = consistency.karras_grid(n, n, ct.sigma_min, ct.sigma_max, ct.rho)
  apply_fn = state_lib.create_model(config).apply

  @jax.jit
  def msq(params, x0, z, t, r):
    f = lambda s: consistency.consistency_fn(
      apply_fn, params, x0 + s * z, jnp.full(x0.shape[:1], s), ct, train=False
    )
    return jnp.mean((f(t) - f(r)) ** 2, axis=(1, 2, 3))

  z = np.random.default_rng(seed).standard_normal(x0.shape).astype(np.float32)
  levels = []
  for i in indices:
    t, r = float(grid[i]), float(grid[i + 1])
    m = [
      np.asarray(msq(params, x0[s : s + batch], z[s : s + batch], t, r))
      for s in range(0, len(x0), batch)
    ]
    levels.append({"index": i, "t": t, "r": r, "m": np.concatenate(m)})
  return levels


def format_residual_table(levels: Rows) -> str:
  """Quantiles and kurtosis of the per-sample residuals of each level."""
  cols = ("mean", "median", "p90", "p99", "max", "max/med", "kurtosis")
  lines = [f"{'i':>5} {'t':>9} {'r':>9}" + "".join(f" {c:>9}" for c in cols)]
  for lv in levels:
    m = lv["m"]
    med, p90, p99 = np.quantile(m, [0.5, 0.9, 0.99])
    vals = (m.mean(), med, p90, p99, m.max(), m.max() / med, kurtosis(m))
    lines.append(
      f"{lv['index']:>5} {lv['t']:>9.4g} {lv['r']:>9.4g}"
      + "".join(f" {v:>9.3g}" for v in vals)
    )
  return "\n".join(lines)


def default_indices(num_scales: int, count: int = 5) -> list[int]:
  """`count` pair indices spread over 0..N-2 (both ends included)."""
  return sorted({int(round(v)) for v in np.linspace(0, num_scales - 2, count)})


# ------------------------------------------------------------ fig. 4


def stage_scales(start: int, end: int) -> list[int]:
  """N of every curriculum stage: min(s0 2^k, s1) + 1 (11, 21, ..., 641)."""
  return sorted({min(start * 2**k, end) + 1 for k in range(64)})


def c_of_n(config: ml_collections.ConfigDict, n: int, schedule: str) -> float:
  """consistency.robust_c at N under `schedule` (adaptive | constant)."""
  ct = copy.deepcopy(config.ct)
  ct.c_schedule = schedule
  dim = int(np.prod(state_lib.example_shape(config)))
  return float(consistency.robust_c(n, ct, dim))


def fit_power_law(n: Sequence[int], y: Sequence[float]) -> tuple[float, float]:
  """(a, b) of the least-squares fit y = exp(a ln(N - 1) + b)."""
  a, b = np.polyfit(np.log(np.asarray(n) - 1.0), np.log(y), 1)
  return float(a), float(b)


def fig4_rows(config: ml_collections.ConfigDict, scalars: dict) -> Rows:
  """Per stage N: c(N) adaptive and constant, and the logged td_std.

  A logged step belongs to the stage of its `num_scales` scalar; `td_std`
  is the median over the stage's logged steps (NaN when none).
  """
  stage_of = {s: int(round(v)) for s, v in scalars.get("num_scales", [])}
  td: dict[int, list[float]] = {}
  for s, v in scalars.get("td_std", []):
    if s in stage_of:
      td.setdefault(stage_of[s], []).append(v)
  return [
    {
      "N": n,
      "count": len(td.get(n, [])),
      "c_adaptive": c_of_n(config, n, "adaptive"),
      "c_constant": c_of_n(config, n, "constant"),
      "td_std": float(np.median(td[n])) if n in td else float("nan"),
    }
    for n in stage_scales(config.ct.start_scales, config.ct.end_scales)
  ]


def format_fig4(rows: Rows) -> str:
  """The Fig. 4 table and the power-law fit of the median td_std."""
  cols = ("N", "logged", "c_adaptive", "c_constant", "td_std", "td/c_adapt")
  lines = ["".join(f"{c:>12}" for c in cols)]
  for r in rows:
    ratio = r["td_std"] / r["c_adaptive"]
    lines.append(
      f"{r['N']:>12}{r['count']:>12}{r['c_adaptive']:>12.4g}"
      f"{r['c_constant']:>12.4g}{r['td_std']:>12.4g}{ratio:>12.3g}"
    )
  have = [r for r in rows if r["count"]]
  if len(have) >= 2:
    a, b = fit_power_law([r["N"] for r in have], [r["td_std"] for r in have])
    lines.append(
      f"fit of td_std: exp({a:.3f} ln(N-1) {b:+.3f}); adaptive c(N): "
      f"exp({FIT[0]} ln(N-1) {FIT[1]:+})"
    )
  elif not have:
    lines.append("no td_std in the event files (logged by newer train loops)")
  return "\n".join(lines)


# ------------------------------------------------------------ plots


def _save(fig: Any, path: str) -> None:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
  storage.write_bytes(path, buf.getvalue())


def _hist_panel(ax: Any, series: dict[str, np.ndarray], title: str) -> None:
  """Log-density histograms of standardized values against N(0, 1)."""
  edges = np.linspace(-8.0, 8.0, 129)
  mid = 0.5 * (edges[1:] + edges[:-1])
  for name, x in series.items():
    dens, _ = np.histogram(standardize(np.ravel(x)), edges, density=True)
    ax.semilogy(mid, np.where(dens > 0, dens, np.nan), label=name, lw=1)
  gauss = np.exp(-0.5 * mid**2) / math.sqrt(2 * math.pi)
  ax.semilogy(mid, gauss, "k--", label="gaussian", lw=1)
  ax.set_ylim(bottom=1e-7)
  ax.set(xlabel="standardized value (std)", ylabel="density", title=title)
  ax.legend(fontsize=7)


def plot_fig1(data: np.ndarray | None, levels: Rows | None, label: str) -> Any:
  """Fig. 1: data histograms per channel and/or residual histograms."""
  from matplotlib.figure import Figure  # Lazy: the `notebook` extra.

  panels = [p for p in (data, levels) if p is not None]
  fig = Figure(figsize=(5.5 * len(panels), 4))
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  if data is not None:
    x = data.reshape(-1, data.shape[-1] if data.ndim > 1 else 1)
    series = {f"channel {c}": x[:, c] for c in range(x.shape[1])}
    _hist_panel(axes[0], series, f"{label}: values per channel")
  if levels is not None:
    series = {f"t={lv['t']:.3g}": lv["m"] for lv in levels}
    _hist_panel(axes[-1], series, "per-sample TD residual m")
  return fig


def plot_fig4(rows: Rows) -> Any:
  """Fig. 4: c(N) adaptive and constant, and median td_std, log-log."""
  from matplotlib.figure import Figure  # Lazy: the `notebook` extra.

  n = np.array([r["N"] for r in rows], np.float64) - 1.0
  fig = Figure(figsize=(5.5, 4))
  ax = fig.subplots()
  ax.loglog(n, [r["c_adaptive"] for r in rows], "o-", label="c(N) adaptive")
  ax.loglog(n, [r["c_constant"] for r in rows], "s--", label="c constant")
  ax.loglog(n, [r["td_std"] for r in rows], "^:", label="median td_std")
  ax.set(xlabel="N - 1", title="robust-loss scale and TD residual std")
  ax.legend(fontsize=8)
  return fig


# ------------------------------------------------------------ commands


def _residual_levels(args: flags.FlagValues) -> tuple[Rows, str]:
  """Residuals of --workdir's checkpoint on its final grid, and a heading."""
  mesh = parallel.make_mesh(jax.devices()[:1])
  run = runs.load_run(args.workdir, what="ema", ema_decay=args.ema, mesh=mesh)
  k, ct = int(run.meta["total_steps"]), run.config.ct
  n = int(consistency.num_scales(k - 1, k, ct.start_scales, ct.end_scales))
  indices = default_indices(n)
  if args.indices:
    indices = [int(i) for i in args.indices.split(",")]
  x0 = run_data(run.config, args.num or 256, args.seed)
  levels = td_residuals(run.config, run.params, x0, n, indices, seed=args.seed)
  ema = run.config.sample.ema_decay if args.ema is None else args.ema
  head = (
    f"{args.workdir} step {run.step}, EMA {ema}, {len(x0)} examples, "
    f"grid N = {n}: per-sample TD residual m"
  )
  return levels, head


def fig1(args: flags.FlagValues) -> tuple[str, str]:
  """Runs `fig1`; returns (printed text, PNG path)."""
  if not (args.source or args.npz or args.workdir):
    raise ValueError("fig1 needs --source=digits|latents, --npz or --workdir")
  text, data, levels = [], None, None
  label = os.path.basename(args.npz) if args.npz else args.source
  if args.source or args.npz:
    if args.npz:
      data = load_npz(args.npz, args.key, args.num, args.seed)
    else:
      data = load_source(args.source, args.config, args.num, args.seed)
    text.append(f"{label}: {data.size:,} values of shape {data.shape}")
    text.append(format_outlier_table(outlier_table(data)))
  if args.workdir:
    levels, head = _residual_levels(args)
    text += [head, format_residual_table(levels)]
  out = args.out or f"fig1_{label}.png"
  if args.workdir and not args.out:
    out = storage.join(args.workdir, "fig1.png")
  _save(plot_fig1(data, levels, label), out)
  return "\n".join(text), out


def fig4(args: flags.FlagValues) -> tuple[str, str]:
  """Runs `fig4`; returns (printed text, PNG path)."""
  config = run_config.read_config(args.workdir)
  rows = fig4_rows(config, read_scalars(args.workdir))
  out = args.out or storage.join(args.workdir, "fig4.png")
  _save(plot_fig4(rows), out)
  ct = config.ct
  head = (
    f"{args.workdir}: stages s0={ct.start_scales} -> s1={ct.end_scales}, "
    f"c_schedule={ct.c_schedule}; td_std = median over each stage's logs"
  )
  return head + "\n" + format_fig4(rows), out


def quiet_logs() -> None:
  """Hides orbax's warnings about read-only restores (its errors show)."""
  logging_std.getLogger("absl").addFilter(
    lambda r: r.levelno >= logging_std.ERROR or "orbax" not in r.pathname
  )


FIGURES = ("fig1", "fig4")
_USAGE = (
  "usage: python -m ilct_jax.lab.analysis fig1|fig4 [WORKDIR] [--flags]"
  " (see the module docstring)"
)


def _flag_values() -> flags.FlagValues:
  """The command's absl flags, on a FlagValues of its own (so that `main`
  can run more than once in a process)."""
  fv = flags.FlagValues()
  define = dict(flag_values=fv)
  flags.DEFINE_enum(
    "source", "", ["", "digits", "latents"], "fig1: data source.", **define
  )
  flags.DEFINE_string(
    "config", "", "fig1: config of --source=latents.", **define
  )
  flags.DEFINE_string(
    "npz", "", "fig1: .npz file of values [..., C].", **define
  )
  flags.DEFINE_string(
    "key", "", "fig1: array in --npz (default: first).", **define
  )
  flags.DEFINE_string(
    "workdir", "", "Run directory (fig4: or WORKDIR).", **define
  )
  flags.DEFINE_float(
    "ema", None, "fig1: EMA decay of --workdir, 0=online.", **define
  )
  flags.DEFINE_string(
    "indices", "", "fig1: grid indices, e.g. 0,20,39.", **define
  )
  flags.DEFINE_integer("num", 0, "fig1: examples (0: default).", **define)
  flags.DEFINE_integer("seed", 0, "fig1: sampling seed.", **define)
  flags.DEFINE_string("out", "", "PNG path.", **define)
  return fv


def parse_args(argv: Sequence[str]) -> tuple[str, flags.FlagValues]:
  """(figure, flag values) of the command line (absl flag syntax)."""
  fv = _flag_values()
  rest = cli.parse_own(fv, argv, _USAGE)
  if not rest or rest[0] not in FIGURES or len(rest) > 2:
    raise SystemExit(_USAGE)
  if len(rest) == 2:
    fv.workdir = rest[1]
  if rest[0] == "fig4" and not fv.workdir:
    raise SystemExit(f"fig4 needs a WORKDIR\n{_USAGE}")
  return rest[0], fv


def main(argv: Sequence[str]) -> None:
  """Prints the table of the figure and writes its PNG."""
  figure, args = parse_args(argv)
  quiet_logs()
  text, out = (fig1 if figure == "fig1" else fig4)(args)
  print(text)
  print(f"wrote {out}")


if __name__ == "__main__":
  main(sys.argv[1:])
