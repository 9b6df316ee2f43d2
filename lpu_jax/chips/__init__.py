"""Emulated chips: the deployment layout, each chip's share of the parameters, and placement of the
per-chip program on JAX devices (one chip per device, or many chips folded onto one)."""
