"""The reference side of the parity tests: weights, inputs, outputs, goldens.

The parity tests (vae_parity_test, inception_parity_test, optim_test,
unet_parity_test) compare this project's code with the implementations it
follows: diffusers' AutoencoderKL, pytorch-fid's InceptionV3 and Frechet
distance, torch's RAdam and the authors' DhariwalUNet (quandao10/LCT, branch
`ot`). Every reference runs on weights and inputs drawn here from numpy seeds,
so a test rebuilds them without torch, and its outputs come from one of two
places:

- **golden**: arrays in tests/golden/*.npz, committed, with the versions of
  the libraries that made them in tests/golden/versions.json. Always checked.
- **live**: when torch and the references are installed
  (`pip install -e ".[parity]"`), the tests also run the references
  themselves and check that they still give the goldens. The authors' UNet
  is not a package: it runs live when ILCT_AUTHORS_REPO names a checkout of
  quandao10/LCT (branch `ot`).

Regenerate the goldens (needs the `[parity]` extra and the authors' checkout):

  python -m tests.references --authors_repo=/path/to/LCT

Nothing here imports torch at module level.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import datetime
import functools
import importlib.metadata
import importlib.util
import json
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ilct_jax.models import convert_inception, convert_vae, inception, unet
from ilct_jax.models import vae as vae_lib

GOLDEN_DIR = pathlib.Path(__file__).parent / "golden"
AUTHORS_ENV = "ILCT_AUTHORS_REPO"
AUTHORS_COMMIT = "5e7d492"  # quandao10/LCT branch `ot`, as read for docs/.
PARITY_EXTRA = 'pip install -e ".[parity]"'
_PACKAGES = ("torch", "torchvision", "diffusers", "pytorch-fid", "numpy")


def golden(name: str) -> dict[str, np.ndarray]:
  """tests/golden/<name>.npz as a dict of arrays."""
  path = GOLDEN_DIR / f"{name}.npz"
  with np.load(path, allow_pickle=False) as data:
    return dict(data)


_LIVE: dict[str, dict[str, np.ndarray]] = {}


def expected(
  source: str, name: str, live: Callable[[], dict], needs: tuple[str, ...]
) -> dict[str, np.ndarray]:
  """The reference outputs of tests/golden/<name>.npz, or the live ones.

  source "golden" reads the file. "live" runs `live()` (once per run), skips
  with the install command when a package of `needs` is missing, and checks
  that the live outputs still equal the goldens: a new version of a
  reference that changed its numbers shows here, not as a parity failure.
  """
  want = golden(name)
  if source == "golden":
    return want
  missing = [n for n in needs if importlib.util.find_spec(n) is None]
  if missing:
    pytest.skip(f"live parity needs {', '.join(missing)}: {PARITY_EXTRA}")
  if name not in _LIVE:
    _LIVE[name] = live()
  got = _LIVE[name]
  for key, value in want.items():
    err = rel_err(got[key], value) if value.size > 1 else abs(got[key] - value)
    assert err <= 1e-5 * max(1.0, float(np.abs(value).max())), (
      f"{name}/{key}: the live reference is {err:.1e} from its golden; "
      "if a reference library changed, regenerate with "
      "`python -m tests.references` and record why"
    )
  return got


def live_modules(*names: str) -> list[Any] | None:
  """The reference packages, or None when one of them is not installed."""
  if any(importlib.util.find_spec(n) is None for n in names):
    return None
  return [importlib.import_module(n) for n in names]


def rel_err(got, want) -> float:
  """max |got - want| / max |want|, in float64."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def _torch_layout(value: np.ndarray) -> np.ndarray:
  """Flax conv [kh, kw, I, O] -> [O, I, kh, kw]; dense [I, O] -> [O, I]."""
  value = np.asarray(value, np.float32)
  if value.ndim == 4:
    value = value.transpose(3, 2, 0, 1)
  elif value.ndim == 2:
    value = value.T
  return np.ascontiguousarray(value)


# --- diffusers AutoencoderKL ------------------------------------------------

VAE_CASES = {
  "tiny": dict(widths=(32, 64, 64), layers=1, groups=8, batch=2, size=16),
  "sd": dict(
    widths=(128, 256, 512, 512), layers=2, groups=32, batch=1, size=64
  ),
}
SD_VAE_PARAMS = 83_653_863  # diffusers' SD AutoencoderKL, counted live.


def vae_module(case: str) -> vae_lib.AutoencoderKL:
  c = VAE_CASES[case]
  return vae_lib.AutoencoderKL(
    block_out_channels=c["widths"],
    layers_per_block=c["layers"],
    norm_num_groups=c["groups"],
  )


def vae_torch_tensors(params) -> dict[str, np.ndarray]:
  """Flax VAE params -> diffusers-named tensors in PyTorch layout."""
  return {
    convert_vae.torch_name(path): _torch_layout(value)
    for path, value in vae_lib.flatten(params).items()
  }


def vae_weights(case: str) -> dict[str, np.ndarray]:
  """The case's weights (`vae.random_params`, seed 0), diffusers names."""
  return vae_torch_tensors(vae_lib.random_params(vae_module(case), seed=0))


def vae_diffusers_config(case: str) -> dict[str, Any]:
  c = VAE_CASES[case]
  n = len(c["widths"])
  return dict(
    block_out_channels=c["widths"],
    layers_per_block=c["layers"],
    norm_num_groups=c["groups"],
    latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * n,
    up_block_types=("UpDecoderBlock2D",) * n,
  )


def vae_inputs(case: str) -> tuple[np.ndarray, np.ndarray]:
  """NHWC images in [-1, 1] and unscaled latents z, seed 0."""
  c = VAE_CASES[case]
  rng = np.random.default_rng(0)
  b, s = c["batch"], c["size"]
  images = rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32)
  f = s // 2 ** (len(c["widths"]) - 1)
  z = rng.normal(size=(b, f, f, 4)).astype(np.float32)
  return images, z


def vae_reference(case: str) -> dict[str, np.ndarray]:
  """diffusers' posterior mean / logvar and decode(z), NHWC (live)."""
  torch, diffusers = live_modules("torch", "diffusers")
  model = diffusers.AutoencoderKL(**vae_diffusers_config(case)).eval()
  state = {
    k: torch.from_numpy(np.array(v)) for k, v in vae_weights(case).items()
  }
  model.load_state_dict(state, strict=True)
  images, z = vae_inputs(case)

  def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

  def nhwc(x):
    return x.detach().numpy().transpose(0, 2, 3, 1)

  with torch.no_grad():
    posterior = model.encode(nchw(images)).latent_dist
    return {
      "mean": nhwc(posterior.mean),
      "logvar": nhwc(posterior.logvar),
      "decode": nhwc(model.decode(nchw(z)).sample),
    }


# --- pytorch-fid InceptionV3 and Frechet distance ----------------------------

FRECHET_CASES = ((500, 64, 0.1), (300, 32, 2.0), (1000, 8, 0.0))
RESIZE_SIZES = ((256, 256), (512, 400), (37, 50), (299, 299))
RESIZE_STRIDE = 13  # Goldens keep every 13th row and column of the 299 x 299.


def inception_variables():
  """He-normal kernels (`inception.init_variables`, seed 0) with every
  BatchNorm tensor and the fc bias moved off their trivial values (seed 1),
  so that a swapped or dropped mapping shows."""
  module = inception.InceptionV3()
  flat = traverse_util.flatten_dict(inception.init_variables(module, seed=0))
  rng = np.random.default_rng(1)
  for path in sorted(flat):
    shape, leaf = flat[path].shape, path[-1]
    if path[0] == "batch_stats":
      draw = (
        rng.uniform(0.8, 1.25, shape)
        if leaf == "var"
        else 0.1 * rng.standard_normal(shape)
      )
    elif leaf == "scale":
      draw = rng.uniform(0.5, 1.5, shape)
    elif leaf == "bias":
      draw = 0.1 * rng.standard_normal(shape)
    else:
      continue
    flat[path] = draw.astype(np.float32)
  return module, traverse_util.unflatten_dict(flat)


def inception_state_dict(variables) -> dict[str, np.ndarray]:
  """The pytorch-fid state dict that `convert_inception` turns into these."""
  flat = traverse_util.flatten_dict(variables)
  return {
    convert_inception._torch_name(path): _torch_layout(value)
    for path, value in flat.items()
  }


def inception_inputs() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  out = {"uint8_256": rng.integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)}
  rng = np.random.default_rng(1)
  out["float_320x340"] = rng.random((2, 3, 320, 340), dtype=np.float32)
  for hw in RESIZE_SIZES:
    x = np.random.default_rng(2).random((2, 3, *hw), dtype=np.float32)
    out[f"resize_{hw[0]}x{hw[1]}"] = x
  return out


def frechet_stats(case_index: int) -> list[np.ndarray]:
  """mu1, sigma1, mu2, sigma2 of the case (numpy, seed 3, in order)."""
  from ilct_jax.evaluation import fid

  rng = np.random.default_rng(3)
  for i, (n, d, shift) in enumerate(FRECHET_CASES):
    a = rng.standard_normal((n, d)) @ rng.standard_normal((d, d))
    b = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + shift
    if i == case_index:
      return [*fid.stats_from_features(a), *fid.stats_from_features(b)]
  raise IndexError(case_index)


def fallback_stats() -> list[np.ndarray]:
  from ilct_jax.evaluation import fid

  rng = np.random.default_rng(5)
  return [
    *fid.stats_from_features(rng.standard_normal((40, 30))),
    *fid.stats_from_features(rng.standard_normal((40, 30)) + 0.3),
  ]


def pytorch_fid_model(state: dict[str, np.ndarray]):
  """pytorch-fid's InceptionV3 (pool3 block) and its inner net, these
  weights: its URL loader is replaced by one returning `state` (live)."""
  torch, pfi = live_modules("torch", "pytorch_fid.inception")
  tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}
  inner = {}
  build, load = pfi.fid_inception_v3, pfi.load_state_dict_from_url

  def capture():
    inner["net"] = build()
    return inner["net"]

  pfi.load_state_dict_from_url = lambda *a, **k: tensors
  pfi.fid_inception_v3 = capture
  try:
    model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
  finally:
    pfi.fid_inception_v3, pfi.load_state_dict_from_url = build, load
  return model.eval(), inner["net"].eval()


def pool3_logits(model, net, images_nchw: np.ndarray):
  torch = live_modules("torch")[0]
  with torch.no_grad():
    pool3 = model(torch.from_numpy(images_nchw))[0][:, :, 0, 0]
    return pool3.numpy(), net.fc(pool3).numpy()


def inception_reference() -> dict[str, np.ndarray]:
  """pytorch-fid's pool3/logits, torch's bilinear resize and pytorch-fid's
  Frechet distance on the inputs above (live)."""
  torch, fid_score = live_modules("torch", "pytorch_fid.fid_score")
  _, variables = inception_variables()
  model, net = pytorch_fid_model(inception_state_dict(variables))
  x = inception_inputs()
  # pytorch-fid's pipeline: ToTensor (x / 255, NCHW) -> InceptionV3.
  u8 = x["uint8_256"].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
  out = {"pool3_uint8_256": pool3_logits(model, net, u8)[0]}
  pool3, logits = pool3_logits(model, net, x["float_320x340"])
  out.update(pool3_320x340=pool3, logits_320x340=logits)
  s = RESIZE_STRIDE
  for hw in RESIZE_SIZES:
    name = f"resize_{hw[0]}x{hw[1]}"
    ref = torch.nn.functional.interpolate(
      torch.from_numpy(x[name]),
      size=(299, 299),
      mode="bilinear",
      align_corners=False,
    ).numpy()
    out[name] = ref.transpose(0, 2, 3, 1)[:, ::s, ::s]
  out["frechet"] = np.array(
    [
      fid_score.calculate_frechet_distance(*frechet_stats(i))
      for i in range(len(FRECHET_CASES))
    ]
  )
  out["frechet_fallback"] = np.array(frechet_fallback_reference(fid_score))
  return out


def frechet_fallback_reference(fid_score) -> float:
  """pytorch-fid's distance when its first matrix root is not finite."""
  real_sqrtm = fid_score.linalg.sqrtm
  calls = []

  def nan_first(a, **kwargs):  # pytorch-fid's first call passes disp=False.
    calls.append(a)
    if len(calls) % 2 == 1:
      nan = np.full_like(a, np.nan)
      return (nan, np.inf) if kwargs.get("disp") is False else nan
    return real_sqrtm(a)

  fid_score.linalg.sqrtm = nan_first
  try:
    value = fid_score.calculate_frechet_distance(*fallback_stats(), eps=1e-3)
  finally:
    fid_score.linalg.sqrtm = real_sqrtm
  assert len(calls) == 2, "pytorch-fid no longer takes its eps path"
  return float(value)


# --- torch RAdam -------------------------------------------------------------

RADAM_STEPS = 8  # RAdam rectifies from step 6 (rho_t > 5): both branches.
RADAM_LR = 1e-2  # Larger than the paper's 1e-4 so differences would show.


def radam_inputs() -> tuple[np.ndarray, list[np.ndarray]]:
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(5, 3))
  return w0, [rng.normal(size=(5, 3)) for _ in range(RADAM_STEPS)]


def radam_reference() -> dict[str, np.ndarray]:
  """torch.optim.RAdam with weight decay, float64, the paper's betas/eps."""
  (torch,) = live_modules("torch")
  from configs import default

  cfg = default.get_config().optim
  w0, grads = radam_inputs()
  w = torch.nn.Parameter(torch.tensor(w0))
  opt = torch.optim.RAdam(
    [w],
    lr=RADAM_LR,
    betas=(cfg.b1, cfg.b2),
    eps=cfg.eps,
    weight_decay=cfg.weight_decay,
  )
  trajectory = []
  for g in grads:
    w.grad = torch.tensor(g)
    opt.step()
    trajectory.append(w.detach().numpy().copy())
  return {"trajectory": np.stack(trajectory)}


# --- the authors' DhariwalUNet -----------------------------------------

# Each case is one of the paper's UNets shrunk: NsLN everywhere (CelebA-HQ,
# FFHQ) or GroupNorm everywhere (LSUN Church). 128 channels at 4x4 give two
# attention heads (the authors fix 64 channels per head).
UNET_CASES = {
  "nsln": dict(
    norm="nsln",
    authors_norm="non-scaling-layer-norm",
    model_channels=64,
    channel_mult=(1, 2),
    num_blocks=1,
    attn_resolutions=(4,),
    batch=2,
    size=8,
  ),
  "group": dict(
    norm="group",
    authors_norm="group-norm",
    model_channels=32,
    channel_mult=(1, 2, 2),
    num_blocks=2,
    attn_resolutions=(4,),
    batch=2,
    size=16,
  ),
}
UNET_CHANNELS = 4  # SD latents.


def unet_module(case: str) -> unet.DhariwalUNet:
  c = UNET_CASES[case]
  return unet.DhariwalUNet(
    out_channels=UNET_CHANNELS,
    model_channels=c["model_channels"],
    channel_mult=c["channel_mult"],
    num_blocks=c["num_blocks"],
    attn_resolutions=c["attn_resolutions"],
    head_channels=64,
    norm=c["norm"],
  )


def unet_inputs(case: str) -> tuple[np.ndarray, np.ndarray]:
  """NHWC x and raw noise labels 250 ln(sigma) for sigma in [0.002, 80]."""
  c = UNET_CASES[case]
  rng = np.random.default_rng(0)
  x = rng.normal(size=(c["batch"], c["size"], c["size"], UNET_CHANNELS))
  sigma = np.exp(rng.uniform(np.log(0.002), np.log(80.0), c["batch"]))
  return x.astype(np.float32), (250 * np.log(sigma)).astype(np.float32)


def unet_params(case: str):
  """Kernels ~ N(0, 1/fan_in) (zero-initialised layers too), biases and norm
  biases ~ N(0, 0.1^2), norm scales ~ 1 + N(0, 0.1^2); numpy seed 0 over the
  sorted Flax paths."""
  x, labels = unet_inputs(case)
  shapes = jax.eval_shape(
    functools.partial(unet_module(case).init, train=False),
    jax.random.key(0),
    jnp.asarray(x),
    jnp.asarray(labels),
  )["params"]
  flat = traverse_util.flatten_dict(shapes, sep="/")
  rng = np.random.default_rng(0)
  out = {}
  for path in sorted(flat):
    shape = flat[path].shape
    if path.endswith("kernel"):
      value = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
    else:
      value = 0.1 * rng.normal(size=shape) + path.endswith("scale")
    out[path] = value.astype(np.float32)
  return traverse_util.unflatten_dict(out, sep="/")


def authors_unet_state(params) -> dict[str, np.ndarray]:
  """Flax DhariwalUNet params -> the authors' state-dict names and layouts.

  'enc_8x8_conv/kernel' -> 'enc.8x8_conv.weight'; LayerNorm tensors
  [H, W, C] -> [C, H, W]; a scale-free norm's fixed weight is ones.
  """
  state = {}
  for path, value in traverse_util.flatten_dict(params, sep="/").items():
    *modules, leaf = path.split("/")
    top = modules[0]
    if top.startswith(("enc_", "dec_")):
      modules[0] = top.replace("_", ".", 1)
    name = ".".join(modules)
    value = np.asarray(value, np.float32)
    if value.ndim == 3:  # A LayerNorm's per-element tensor.
      value = value.transpose(2, 0, 1)
    else:
      value = _torch_layout(value)
    suffix = "bias" if leaf == "bias" else "weight"
    state[f"{name}.{suffix}"] = np.ascontiguousarray(value)
    if leaf == "bias" and modules[-1].startswith(("norm", "out_norm")):
      state.setdefault(f"{name}.weight", np.ones_like(value))
  return state


def _authors_network(repo: str):
  """models/network_karras.py of the authors' checkout (torch_utils beside)."""
  root = pathlib.Path(repo)
  source = root / "models" / "network_karras.py"
  if not source.is_file():
    raise FileNotFoundError(
      f"{source} not found: {AUTHORS_ENV} / --authors_repo must name a "
      f"checkout of github.com/quandao10/LCT (branch ot, {AUTHORS_COMMIT})."
    )
  sys.path.insert(0, str(root))
  spec = importlib.util.spec_from_file_location("lct_network_karras", source)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # EDM's persistence decorator needs it.
  spec.loader.exec_module(module)
  return module


def unet_reference(case: str, repo: str) -> dict[str, np.ndarray]:
  """The authors' DhariwalUNet (eval mode) on the case's inputs (live)."""
  (torch,) = live_modules("torch")
  c = UNET_CASES[case]
  net = (
    _authors_network(repo)
    .DhariwalUNet(
      img_resolution=c["size"],
      in_channels=UNET_CHANNELS,
      out_channels=UNET_CHANNELS,
      model_channels=c["model_channels"],
      channel_mult=list(c["channel_mult"]),
      num_blocks=c["num_blocks"],
      attn_resolutions=list(c["attn_resolutions"]),
      dropout=0.0,
      block_norm_type=c["authors_norm"],
      last_norm_type=c["authors_norm"],
    )
    .eval()
  )
  state = authors_unet_state(unet_params(case))
  tensors = {k: torch.from_numpy(v) for k, v in state.items()}
  # EDM's fixed [1, 1] resampling filters are buffers, not weights.
  fixed = net.state_dict()
  tensors.update({k: fixed[k] for k in fixed if k.endswith("resample_filter")})
  net.load_state_dict(tensors, strict=True)
  x, labels = unet_inputs(case)
  with torch.no_grad():
    out = net(
      torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))),
      torch.from_numpy(labels),
    )
  return {"out": out.numpy().transpose(0, 2, 3, 1)}


# --- regeneration -------------------------------------------------------


def _versions(authors_repo: str) -> dict[str, str]:
  out = {p: importlib.metadata.version(p) for p in _PACKAGES}
  out["python"] = sys.version.split()[0]
  out["authors_repo"] = f"quandao10/LCT@{AUTHORS_COMMIT} (branch ot)"
  out["generated"] = datetime.date.today().isoformat()
  return out


def regenerate(authors_repo: str, out_dir: pathlib.Path = GOLDEN_DIR) -> None:
  out_dir.mkdir(parents=True, exist_ok=True)
  files = {
    **{f"vae_{case}": vae_reference(case) for case in VAE_CASES},
    "inception": inception_reference(),
    "radam": radam_reference(),
    **{f"unet_{c}": unet_reference(c, authors_repo) for c in UNET_CASES},
  }
  diffusers = live_modules("diffusers")[0]
  sd = diffusers.AutoencoderKL(**vae_diffusers_config("sd"))
  counted = sum(p.numel() for p in sd.parameters())
  assert counted == SD_VAE_PARAMS, counted
  for name, arrays in files.items():
    np.savez(out_dir / f"{name}.npz", **arrays)
    print(name, {k: v.shape for k, v in arrays.items()})
  versions = _versions(authors_repo)
  (out_dir / "versions.json").write_text(json.dumps(versions, indent=1) + "\n")
  print(versions)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--authors_repo",
    default=os.environ.get(AUTHORS_ENV),
    required=AUTHORS_ENV not in os.environ,
    help="a checkout of github.com/quandao10/LCT, branch ot",
  )
  parser.add_argument("--out", default=str(GOLDEN_DIR))
  args = parser.parse_args()
  # As in tests/conftest.py: torch must not load triton beside jaxlib.
  sys.modules.setdefault("triton", None)
  regenerate(args.authors_repo, pathlib.Path(args.out))


if __name__ == "__main__":
  main()
