"""Pallas kernels, installed as lpu_jax.kernels; each has a plain-JAX reference twin and a test."""
