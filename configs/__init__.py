"""Data only: hardware/*.toml and models/*.json, installed as lpu_jax.configs."""
