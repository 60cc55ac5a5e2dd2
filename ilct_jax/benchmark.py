"""`python -m ilct_jax.benchmark`: the command of `ilct_jax.lab.benchmark`.

The program lives in the lab wing (`ilct_jax/lab/`); this module keeps its
documented command. It imports no ilct_jax module, so the lab program runs as
`__main__` exactly as `python -m ilct_jax.lab.benchmark` would.
"""

import runpy

if __name__ == "__main__":
  runpy.run_module(
    "ilct_jax.lab.benchmark", run_name="__main__", alter_sys=True
  )
