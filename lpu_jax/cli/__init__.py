"""Command-line entry points (absl): lpu-generate, lpu-bench."""
