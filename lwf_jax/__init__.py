"""lwf_jax: Learning without Forgetting (Li & Hoiem, 2016) in JAX and Flax.

The losses are importable on their own::

    from lwf_jax import losses
    loss = losses.lwf_objective(new_logits, labels, old_logits, recorded_old_logits)
"""

__version__ = "0.1.0"
