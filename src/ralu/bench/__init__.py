"""Benchmarks (``ralu bench NAME``): speed, quality, region choice, caching and SD3 positions, on the toy model or tiny real-class models."""
