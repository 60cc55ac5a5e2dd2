"""tools/device_check.sh runs end to end on CPU with the small config."""

import subprocess

from tests import cluster


def test_device_check_small_on_two_cpu_devices():
  proc = subprocess.run(
    ["bash", "tools/device_check.sh", "--small", "--steps=1"],
    cwd=cluster.REPO,
    env=cluster.env(devices=2),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  out = proc.stdout
  assert "# cpu cpu x2" in out
  for check in ("compiles", "exact OT", "1 vs n"):
    assert f"| {check} | yes |" in out, out
  assert "1 compile(s) for N 11 -> 21" in out
  assert "| figure | float32 | bfloat16 |" in out, out
  assert "| figure | B=64 |" in out, out  # OT pairing table.
  assert "| figure | remat=False | remat=True |" in out, out
  assert "| figure | onestep | twostep |" in out, out  # fused FID program.
  for key in ("steps_per_s", "mfu", "ot_share", "device_peak_gib"):
    assert f"| {key} |" in out, out
