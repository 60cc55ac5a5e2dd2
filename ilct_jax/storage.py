"""Where files live: local paths and cloud stores (gs://) behind one API.

Every file the project reads or writes (workdir, checkpoints, config.json,
samples, eval output, latent datasets, statistics, VAE and Inception weights,
reference statistics, image folders) goes through `etils.epath`, so a
`gs://bucket/...` path works wherever a local path does. epath picks its
backend per scheme: local files through `os`, `gs://` through TensorFlow's
GCS filesystem when TensorFlow is installed, else (or with
`EPATH_USE_TF=false`) through fsspec/gcsfs (`pip install ilct_jax[gcs]`).
Checkpoint arrays go to the store through orbax's tensorstore driver.

What this module adds on top of epath:
  * writes that never leave a half-written file (local: temporary file +
    rename; an object store replaces an object whole);
  * readers of `.json` / `.npz` files that name the file and the fix in one
    line when the content is garbage;
  * `local_copy`, for the one reader that needs a local file (ArrayRecord's
    C++ reader): a remote file is staged once to a local cache;
  * `set_retries`: how long an object store may fail before a run gives up
    (docs/RELIABILITY.md). Transient errors (503, 429, resets, timeouts) are
    retried by each client: tensorstore's GCS driver (checkpoint arrays)
    with exponential backoff from `train.storage_initial_delay_s` (1 s),
    `train.storage_retries` times, each wait at most
    `train.storage_max_delay_s` (set here through orbax's
    tensorstore context; tensorstore's own default is 32 retries, about 15
    minutes); gcsfs (every other file) 6 tries with backoff up to 32 s, its
    fixed default. After that the error reaches the program, which exits
    with code 74 (faults.py).
"""

import hashlib
import io
import json
import os
import tempfile
import zipfile
from typing import Any

import numpy as np
from etils import epath

PathLike = str | os.PathLike
CACHE_ENV = "ILCT_CACHE_DIR"  # Root of local copies of remote files.


def set_retries(
  max_retries: int, max_delay_s: float, initial_delay_s: float = 1.0
) -> None:
  """Retries of tensorstore's GCS requests in every checkpoint read/write."""
  from orbax.checkpoint._src.serialization import tensorstore_utils as tsu

  retries = {
    "max_retries": int(max_retries),
    "initial_delay": f"{float(initial_delay_s)}s",
    "max_delay": f"{float(max_delay_s)}s",
  }
  for context in (tsu._BASE_TS_CONTEXT, tsu._DEFAULT_OCDBT_TS_CONTEXT):  # noqa: SLF001 - orbax has no public setting.
    context["gcs_request_retries"] = retries


def is_remote(p: PathLike) -> bool:
  """Whether `p` names an object store (gs://, s3://, ...), not a file."""
  return "://" in os.fspath(p)


def path(p: PathLike) -> epath.Path:
  """`p` as an epath.Path; local paths are made absolute (`~` expanded)."""
  if is_remote(p):
    return epath.Path(os.fspath(p))
  return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(p))))


def join(p: PathLike, *parts: str) -> str:
  """`p`/parts as a string (keeps the gs:// scheme)."""
  return os.fspath(epath.Path(os.fspath(p)).joinpath(*parts))


def exists(p: PathLike) -> bool:
  return path(p).exists()


def isfile(p: PathLike) -> bool:
  return path(p).is_file()


def isdir(p: PathLike) -> bool:
  return path(p).is_dir()


def makedirs(p: PathLike) -> None:
  """Creates a directory and its parents (a no-op on object stores)."""
  path(p).mkdir(parents=True, exist_ok=True)


def listdir(p: PathLike) -> list[str]:
  """Names of the entries of a directory, sorted."""
  return sorted(child.name for child in path(p).iterdir())


def _bare(p: PathLike) -> str:
  """A path without its scheme ("gs://b/x" -> "b/x"), for comparisons."""
  text = os.fspath(p)
  return text.split("://", 1)[1] if "://" in text else text


def walk(p: PathLike):
  """os.walk for any store: yields (relative dir, sub-dir names, file names).

  The relative dir is "" for `p` itself and "a/b" below it. Backends name
  the walked folders differently (gcsfs drops the scheme), so they are
  compared without it.
  """
  top = _bare(path(p)).rstrip("/")
  for root, dirs, files in path(p).walk():
    rel = _bare(root).rstrip("/")[len(top) :].lstrip("/")
    yield rel, dirs, files


def read_bytes(p: PathLike) -> bytes:
  return path(p).read_bytes()


def write_bytes(p: PathLike, data: bytes) -> None:
  """Writes `data` so that a reader sees the old file or the new one whole."""
  target = path(p)
  if is_remote(p):
    target.write_bytes(data)  # An object is replaced as a whole.
    return
  target.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, os.fspath(target))
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text(p: PathLike, text: str) -> None:
  write_bytes(p, text.encode())


def write_json(p: PathLike, obj: Any, **kwargs: Any) -> None:
  """JSON to `p` (sorted keys, indented), written atomically."""
  kwargs = {"indent": 2, "sort_keys": True, **kwargs}
  write_text(p, json.dumps(obj, **kwargs))


def read_json(p: PathLike, what: str, fix: str) -> Any:
  """Parses a JSON file; a missing or garbage file is one clear error.

  Args:
    p: the file.
    what: what the file is ("the latent manifest", ...), for the message.
    fix: what to do about a damaged file, for the message.
  """
  try:
    data = read_bytes(p)
  except FileNotFoundError:
    raise FileNotFoundError(
      f"{what} {os.fspath(p)} does not exist; {fix}"
    ) from None
  try:
    return json.loads(data)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(
      f"{what} {os.fspath(p)} is not valid JSON ({e}); {fix}"
    ) from None


def save_npz(p: PathLike, **arrays: Any) -> None:
  """Arrays to an `.npz` at exactly `p`, written atomically."""
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  write_bytes(p, buf.getvalue())


def load_npz(
  p: PathLike, what: str, fix: str, keys: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
  """Reads every array of an `.npz` (never pickles) with one-line errors.

  Args:
    p: the file.
    what: what the file is ("latent statistics", "VAE weights", ...).
    fix: how to re-create the file, for the messages.
    keys: arrays that must be present.

  Returns:
    {name: array}.
  """
  try:
    data = read_bytes(p)
  except FileNotFoundError:
    raise FileNotFoundError(f"{what} {os.fspath(p)} not found; {fix}") from None
  try:
    with np.load(io.BytesIO(data), allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(
      f"{what} {os.fspath(p)} is not a readable .npz file ({reason}); {fix}"
    ) from None
  missing = [k for k in keys if k not in arrays]
  if missing:
    raise ValueError(
      f"{what} {os.fspath(p)} lacks {missing} (has {sorted(arrays)}); {fix}"
    )
  return arrays


def save_npy(p: PathLike, array: Any) -> None:
  """One array to an `.npy` at exactly `p`, written atomically."""
  buf = io.BytesIO()
  np.save(buf, np.asarray(array))
  write_bytes(p, buf.getvalue())


def cache_root() -> str:
  """Local directory for copies of remote files ($ILCT_CACHE_DIR)."""
  default = os.path.join(os.path.expanduser("~"), ".cache", "ilct_jax")
  return os.environ.get(CACHE_ENV) or default


def local_copy(p: PathLike, size: int | None = None) -> str:
  """A local file with the content of `p` (remote files copied once).

  A local `p` is returned as it is. A remote one is copied to
  `cache_root()/<hash of the URL>/<name>` unless a copy of the expected
  `size` (the remote size when not given) is already there; the copy is
  written to a temporary name and renamed, so concurrent processes on one
  host never read a partial file.
  """
  if not is_remote(p):
    return os.fspath(path(p))
  src = path(p)
  size = src.stat().length if size is None else size
  digest = hashlib.sha256(os.fspath(p).encode()).hexdigest()[:16]
  folder = os.path.join(cache_root(), digest)
  local = os.path.join(folder, src.name)
  if os.path.exists(local) and os.path.getsize(local) == size:
    return local
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{src.name}.", dir=folder)
  with os.fdopen(fd, "wb") as out, src.open("rb") as f:
    while chunk := f.read(1 << 24):
      out.write(chunk)
  if os.path.getsize(tmp) != size:
    os.remove(tmp)
    raise OSError(f"copy of {os.fspath(p)} is incomplete; try again")
  os.replace(tmp, local)
  return local


def move_tree(src: PathLike, dst: PathLike) -> None:
  """Moves a directory tree (object stores: copy every object, then delete).

  The destination's parent is created. Nothing is deleted before every file
  has been copied.
  """
  src_p, dst_p = path(src), path(dst)
  if not is_remote(src) and not is_remote(dst):
    dst_p.parent.mkdir(parents=True, exist_ok=True)
    os.rename(os.fspath(src_p), os.fspath(dst_p))
    return
  for rel, _, files in walk(src_p):
    out = dst_p / rel if rel else dst_p
    out.mkdir(parents=True, exist_ok=True)
    for name in files:
      here = src_p / rel if rel else src_p
      (here / name).copy(out / name, overwrite=True)
  src_p.rmtree()
