"""The lab wing: programs that measure, project and inspect; never imported
by the library (tests/layers_test.py).

`benchmark` (+ `flops`): speed, FLOPs and memory; `preflight` (+
`target_programs`, `compiled_cost`, `targets`): compiling a run for TPU
slices and GPU nodes on any machine, and `scaling_table`, docs/SCALING.md's
table; `inspect_run`: a run's summary; `analysis`: the paper's Fig. 1 and 4.
`python -m ilct_jax.preflight` and `python -m ilct_jax.benchmark` stay the
commands of the first two.
"""
