"""Runnable experiments of lwf_jax: configs, protocols and their reports."""
