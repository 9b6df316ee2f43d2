"""The token-by-token engine: sampling, the compiled prefill/decode steps, the generate loop."""
