"""Model-family adapters for the sampler (one module per family)."""
