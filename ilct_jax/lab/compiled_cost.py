"""What a compiled program costs one device, read from XLA (nothing is run).

`of(compiled)` gives per device: argument, output, aliased and temporary
bytes from XLA's buffer assignment (`memory_analysis`), the peak they add up
to, FLOPs and bytes accessed from its cost analysis, and the collectives of
the optimized HLO (`collectives`): how many of each kind and the bytes of
their results. The preflight reads TPU programs compiled on a CPU host with
it; the numbers are the TPU compiler's, not estimates.
"""

import re
from typing import Any

# Bytes per element of HLO's element types.
_BYTES = {
  "pred": 1,
  "s8": 1,
  "u8": 1,
  "s16": 2,
  "u16": 2,
  "f16": 2,
  "bf16": 2,
  "s32": 4,
  "u32": 4,
  "f32": 4,
  "s64": 8,
  "u64": 8,
  "f64": 8,
  "c64": 8,
  "c128": 16,
}
COLLECTIVES = (
  "all-reduce",
  "all-gather",
  "reduce-scatter",
  "all-to-all",
  "collective-permute",
)
# An HLO instruction: "%name = <shape> <opcode>(...)" where shape is one
# array type or a tuple of them (layouts such as {1,0:T(8,128)} included).
# Async collectives appear as <op>-start / -done; only -start (or the plain
# op) is counted.
_OPCODE = re.compile(
  r"\s(?P<op>" + "|".join(COLLECTIVES) + r")(?P<start>-start)?\("
)
_ARRAY = re.compile(r"([a-z0-9]+)\[([0-9,]*)\]")


def shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape string ('f32[4,8]{1,0}' or a tuple of them)."""
  total = 0
  for dtype, dims in _ARRAY.findall(shape):
    if dtype not in _BYTES:
      continue  # token[] and the like carry no data.
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    total += n * _BYTES[dtype]
  return total


def collectives(hlo_text: str) -> dict[str, dict[str, float]]:
  """{kind: {"count", "bytes"}} of the collectives in optimized HLO text.

  Bytes are those of each collective's result on one device (for an
  all-reduce, the reduced buffer; for an async start, its output tuple's
  data buffers, counted once).
  """
  out = {kind: {"count": 0.0, "bytes": 0.0} for kind in COLLECTIVES}
  for line in hlo_text.splitlines():
    head, eq, rest = line.partition(" = ")
    m = _OPCODE.search(rest) if eq else None
    if m is None or m.start() == 0:
      continue
    shape = rest[: m.start()]
    entry = out[m.group("op")]
    entry["count"] += 1
    size = shape_bytes(shape)
    if m.group("start") and shape.lstrip().startswith("("):
      size //= 2  # An async start's tuple holds the operand and the result.
    entry["bytes"] += size
  return out


def of(compiled: Any) -> dict[str, float]:
  """Per-device memory, FLOPs, bytes accessed and collectives of `compiled`.

  Keys: args, outputs, aliased, temp, total (= args + temp + outputs not
  aliased to donated arguments: what must fit in device memory at once, as
  XLA assigns buffers; code size aside), flops, bytes_accessed,
  collective_count, collective_bytes, plus <kind>_count / <kind>_bytes for
  each collective kind present. Byte figures are bytes.
  """
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, list) else cost) or {}
  out = {
    "args": float(mem.argument_size_in_bytes),
    "outputs": float(mem.output_size_in_bytes),
    "aliased": float(mem.alias_size_in_bytes),
    "temp": float(mem.temp_size_in_bytes),
    "code": float(mem.generated_code_size_in_bytes),
  }
  extra = max(out["outputs"] - out["aliased"], 0.0)
  out["total"] = out["args"] + out["temp"] + extra
  out["flops"] = float(cost.get("flops", float("nan")))
  out["bytes_accessed"] = float(cost.get("bytes accessed", float("nan")))
  coll = collectives(compiled.as_text())
  out["collective_count"] = sum(c["count"] for c in coll.values())
  out["collective_bytes"] = sum(c["bytes"] for c in coll.values())
  for kind, c in coll.items():
    if c["count"]:
      out[f"{kind}_count"], out[f"{kind}_bytes"] = c["count"], c["bytes"]
  return out


def padded_bytes(shape: tuple, dtype: Any, layout: Any) -> int:
  """Device bytes of one array under a tiled layout (TPU pads to its tiles).

  The first tile of `layout.tiling` covers the minor-most dimensions (in
  `layout.major_to_minor` order); each is rounded up to a multiple of its
  tile size. Without tiling this is the plain size.
  """
  import numpy as np

  itemsize = np.dtype(dtype).itemsize
  order = list(layout.major_to_minor) if layout is not None else []
  dims = [shape[i] for i in order] if order else list(shape)
  tiles = list(layout.tiling) if layout is not None and layout.tiling else []
  if tiles:
    tile = list(tiles[0])
    if not dims:  # A scalar still takes one whole tile.
      dims = [1]
    dims = [1] * max(len(tile) - len(dims), 0) + dims
    for k, t in enumerate(reversed(tile), start=1):
      dims[-k] = -(-dims[-k] // t) * t
  n = 1
  for d in dims:
    n *= d
  return n * itemsize


def argument_bytes(compiled: Any, args: Any) -> int:
  """Sum of `padded_bytes` of each argument's per-device shard.

  `args` are the abstract arguments the program was lowered with (with
  their shardings); layouts come from the compiled program. Donated or not,
  this is what XLA's memory analysis calls argument bytes.
  """
  import jax

  formats = jax.tree.leaves(compiled.input_formats)
  leaves = jax.tree.leaves(args)
  total = 0
  for leaf, fmt in zip(leaves, formats, strict=True):
    shard = fmt.sharding.shard_shape(leaf.shape)
    total += padded_bytes(shard, leaf.dtype, fmt.layout)
  return total
