"""Test set-up: eight fake CPU devices, so data-parallel code runs without accelerators.

XLA reads the flag when JAX starts its CPU backend, so it is set before any test
module imports jax.
"""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
