"""Every config field of ilct_jax, with its default and a one-line meaning.

Dataset configs (celeba.py, lsun_church.py, ffhq.py, ilct_baseline.py, demo.py,
tiny.py) import this file and override a handful of fields. Override any field
on the command line, e.g. `--config.optim.lr=2e-4 --config.ct.loss=huber`.

Defaults follow the paper's CelebA-HQ recipe (ALGORITHM.md §1-§13) where
the recipe is dataset independent; switch a technique off with one override.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the default config (paper recipe, CelebA-HQ shapes)."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # Base PRNG seed: init, noise, sampler indices, data order.

  # ---------------------------------------------------------------- data
  config.data = data = ml_collections.ConfigDict()
  data.source = "latents"  # digits | latents | images (tfds image builder).
  data.name = "celeb_a_hq_folder/256"  # tfds image dataset (encode / images).
  data.data_dir = (
    ""  # tfds data_dir ('' = tfds default, ~/tensorflow_datasets).
  )
  data.split = "train"  # Split to train on.
  data.image_size = 32  # Spatial size H = W of a training example.
  data.channels = 4  # Channels of a training example (4 for SD latents).
  data.stats_path = ""  # .npz with per-element latent mean/std (latents only).
  data.num_examples = -1  # -1 = read the size from the dataset itself.
  data.prefetch = 2  # Batches prefetched to the devices.
  data.flip_double = False  # Images: add the mirror of every image (LSUN).
  data.latent_dir = ""  # encode_latents output; the latents source reads it.
  data.encode_batch = 64  # Images per VAE call per process (encode_latents).
  data.encode_chunk = 1024  # Latents per resumable chunk file (encode_latents).
  data.bad_records = "error"  # Damaged latent record: error | skip (+count).
  # Class labels the encoder stores with the latents (ALGORITHM.md §21):
  # none | label (the tfds 'label' feature) | folder (class folders).
  data.labels = "none"

  # ---------------------------------------------------------------- model
  config.model = model = ml_collections.ConfigDict()
  # The network F_theta: unet (the paper's, ALGORITHM.md §11a) | dit (the
  # authors' later transformer, §20; its settings in model.dit below).
  model.arch = "unet"
  model.name = "dhariwal_unet"  # The UNet: EDM's ADM UNet (ALGORITHM.md §11a).
  # Class-conditional training (§21): 0 = unconditional; > 0 = the classes of
  # the dataset's labels (the DiT takes them; guidance: sample.cfg_scale).
  model.num_classes = 0
  # Probability that a training label is replaced by the null label (the
  # authors' class_dropout_prob), which classifier-free guidance needs.
  model.label_dropout = 0.1
  model.model_channels = 128  # Base width of the first level.
  model.channel_mult = (1, 2, 3, 4)  # Width multiplier per resolution level.
  model.num_blocks = 4  # Residual blocks per encoder level.
  model.attn_resolutions = (16, 8)  # Resolutions with self-attention.
  model.head_channels = 64  # Channels per attention head.
  model.dropout = 0.0  # Dropout in residual blocks (0: iCT's 0.3 diverged).
  model.norm = (
    "nsln"  # nsln | group | layer | rms | instance (ALGORITHM.md §11b).
  )
  model.dtype = "float32"  # Activation dtype: float32 | bfloat16.
  # Recompute each UNet block's forward in the backward pass: less activation
  # memory (bigger batches per device) for more compute; same values.
  model.remat = False
  # Kernel forms (ilct_jax/kernels.py): "auto" picks, per kernel, the form
  # measured cheapest on the platform of the devices a program is compiled
  # for (docs/DESIGN.md, kernels by target). Same parameters and values.
  model.kernels = ml_collections.ConfigDict()
  # auto (the platform's row) | plain (XLA formulas) | cpu_tuned (the
  # hand-written forms); a kernel's own field below overrides it.
  model.kernels.forms = "auto"
  model.kernels.conv = "auto"  # auto | cpu (XLA:CPU-tuned forms) | xla.
  model.kernels.norm = "auto"  # auto | custom (hand-written backward) | xla.
  model.kernels.attention = "auto"  # auto | custom | xla.
  # The DiT (model.arch=dit; ALGORITHM.md §20). model.norm applies to it:
  # nsln (no scale, no bias) | rms | layer. model.dtype and model.remat too.
  model.dit = ml_collections.ConfigDict()
  model.dit.size = "B"  # S | B | L | XL (depth, width, heads of DiT-S..XL).
  model.dit.depth = 0  # > 0 overrides the size's depth (small demos).
  model.dit.hidden = 0  # > 0 overrides the size's width.
  model.dit.heads = 0  # > 0 overrides the size's heads.
  model.dit.patch = 2  # Patch side on the latent grid: 2 | 4.
  model.dit.mlp = "gate_relu"  # gelu (DiT's) | relu | gate_relu (GLU).
  model.dit.mlp_ratio = 4.0  # MLP hidden width / width.
  model.dit.qk_norm = True  # Norm of each head's q and k.
  model.dit.rope = True  # 2-D rotary q/k (sin-cos positions stay on).
  model.dit.freq_filter = True  # Learned FFT filter before the MLP.

  # ---------------------------------------------------------------- vae
  config.vae = vae = ml_collections.ConfigDict()
  vae.path = ""  # Converted Flax VAE checkpoint (convert_vae.py) for decoding.

  # ---------------------------------------------------------------- ct
  config.ct = ct = ml_collections.ConfigDict()
  ct.sigma_min = 0.002  # Smallest noise level.
  ct.sigma_max = 80.0  # Largest noise level.
  ct.sigma_data = 0.5  # Data std after normalization.
  ct.rho = 7.0  # Karras grid exponent.
  ct.p_mean = -1.1  # Lognormal index sampler mean (iCT).
  ct.p_std = 2.0  # Lognormal index sampler std (iCT).
  ct.start_scales = 10  # s0 of the doubling curriculum.
  ct.end_scales = 640  # s1 of the doubling curriculum (iCT: 1280).
  ct.index_sampler = "lognormal"  # lognormal | uniform (ALGORITHM.md §3).
  ct.weighting = "ict"  # ict (1/dsigma) | karras | uniform (ALGORITHM.md §4).
  ct.loss = (
    "cauchy"  # cauchy | huber | gm | l2 (per-sample mean, ALGORITHM.md §6).
  )
  ct.c_schedule = (
    "adaptive"  # adaptive (c(N) fit) | constant (ALGORITHM.md §6).
  )
  ct.c = 0.0  # Constant c; 0 = c0 = 0.00054*sqrt(d).
  ct.c_mult = 1.0  # Multiplier on the constant c (ablations: 0.01, 3, ...).
  ct.diffusion_loss = (
    True  # Add the small-sigma diffusion loss (ALGORITHM.md §7).
  )
  ct.diffusion_weight = 5.0  # Weight of the diffusion loss.
  ct.diffusion_threshold = 0.75  # Active where i >= floor(threshold * N).

  # ---------------------------------------------------------------- coupling
  config.coupling = coupling = ml_collections.ConfigDict()
  coupling.method = "exact"  # exact | sinkhorn | none (ALGORITHM.md §9).
  # Rows per OT group, contiguous in the global batch; 0 = the whole batch.
  # The pairing never depends on the device count (ALGORITHM.md §9); the
  # paper configs set the authors' per-GPU batch.
  coupling.group_size = 0
  coupling.epsilon = 0.01  # Sinkhorn entropic regularization (relative).
  coupling.iterations = 200  # Sinkhorn iterations (fixed, so it jits).

  # ---------------------------------------------------------------- optim
  config.optim = optim = ml_collections.ConfigDict()
  optim.name = "radam"  # radam | adam.
  optim.lr = 1e-4  # Constant learning rate.
  optim.b1 = 0.9  # Adam beta1.
  optim.b2 = 0.999  # Adam beta2.
  optim.eps = 1e-8  # Adam epsilon.
  optim.weight_decay = 1e-4  # Coupled L2 (added to the gradient, as PyTorch).

  # ---------------------------------------------------------------- ema
  config.ema = ema = ml_collections.ConfigDict()
  # Decays tracked every step from step 0 (the paper run's: ALGORITHM.md
  # §12, §16); its numbers use 0.99993, the best of the authors' sweep.
  ema.decays = (0.999, 0.9999, 0.99993, 0.99995)

  # ---------------------------------------------------------------- train
  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 128  # Global batch size (all devices and hosts).
  train.epochs = 1400  # Epochs; steps = (num_examples // batch) * epochs.
  train.num_steps = -1  # > 0 overrides the epoch-derived step count.
  train.log_every = 100  # Steps between scalar logs.
  train.sample_every = 5000  # Steps between sample grids (0 = off).
  train.ckpt_every = 5000  # Steps between checkpoints (and at the end).
  # Object-store requests that fail (503, resets) are retried this many times,
  # the waits doubling from the first to the largest, then the run exits with
  # code 74 (checkpoint arrays; storage.set_retries, docs/RELIABILITY.md).
  train.storage_retries = 10
  train.storage_initial_delay_s = 1.0
  train.storage_max_delay_s = 32.0
  # Devices per shard of the train state (params, EMAs, optimizer moments):
  # a second mesh axis "fsdp" of this size (docs/DESIGN.md, sharded state);
  # 1 = replicated. The batch is still split over every device.
  train.fsdp = 1
  train.keep = 3  # Most recent checkpoints kept.
  train.keep_every = 50_000  # Also keep every this many steps (0 = off).
  # Also keep every checkpoint of the last this many epochs (0 = off): the
  # paper picks the best of its last 100 (configs/recipe.py, --mode=sweep).
  train.keep_last_epochs = 0
  # A step with a non-finite loss or gradient is skipped and counted; then
  # halt: EMAs frozen, the run stops after max_nonfinite of them (ours);
  # skip: the same, never stops; authors: EMAs still step, lr halves after
  # each 101 such steps, never stops (LCT train_cm_latent.py).
  train.nonfinite = "halt"
  train.max_nonfinite = 100  # Halt after this many skipped non-finite steps.
  train.eval_every = 0  # Steps between small-N FID evaluations (0 = off).
  train.profile_steps = 0  # Steps to profile once into the workdir (0 = off).
  train.profile_first_step = 10  # First profiled step (after compilation).

  # ---------------------------------------------------------------- log
  config.log = log = ml_collections.ConfigDict()
  # Weights & Biases beside TensorBoard ("" = off; pip install [wandb]).
  log.wandb_project = ""
  log.wandb_entity = ""  # "" = wandb's default entity.
  log.wandb_name = ""  # "" = the workdir's last part.

  # ---------------------------------------------------------------- sample
  config.sample = sample = ml_collections.ConfigDict()
  sample.num = 64  # Samples in a logged grid / written by --mode=sample.
  sample.ema_decay = 0.99993  # EMA decay whose params sample (0 = online).
  sample.grid_scales = 640  # Multistep grid has grid_scales + 1 levels.
  sample.ts = (0, 420, 640)  # Grid indices of the multistep sampler.
  sample.step = -1  # Checkpoint step to sample from (-1 = latest).
  # Class-conditional models (model.num_classes > 0; ALGORITHM.md §21):
  sample.label = -1  # The class of every sample; -1 = random classes.
  sample.cfg_scale = 1.0  # Classifier-free guidance scale (1 = none).
  # Latent channels guidance moves: the authors' DiT guides the first 3 and
  # keeps the conditional output on the rest (DiT's forward_with_cfg); -1 =
  # all channels.
  sample.cfg_channels = 3

  # ---------------------------------------------------------------- eval
  config.eval = ev = ml_collections.ConfigDict()
  ev.num_samples = 50_000  # Samples per FID evaluation.
  ev.batch_size = 200  # Per-call batch for generation and features.
  ev.ref_stats = ""  # Reference FID statistics (.npz with mu, sigma).
  ev.ref_features = ""  # Reference Inception features for precision/recall.
  ev.inception_path = ""  # Converted Flax InceptionV3 (convert_inception.py).
  ev.samplers = ("onestep", "twostep")  # Which samplers to evaluate.
  ev.train_num_samples = 5_000  # Samples for FID during training.
  # paper: uint8 by truncation, JPEG q75, FID on the decoded JPEG (the
  # authors' measurement); png: rounded, lossless (docs/EVAL.md).
  ev.protocol = "png"
  ev.save_images = False  # Keep the files FID saw under WORKDIR/eval/<step>.
  ev.step = -1  # Checkpoint step to evaluate (-1 = latest).
  ev.ema_decay = -1.0  # EMA decay to evaluate (-1 = sample.ema_decay).
  ev.seed = 42  # Sampling seed of FID samples (the reference used 42).
  ev.inception_size = 299  # Inception input side; != 299 only for tests.
  return config
