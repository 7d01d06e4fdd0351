"""dltui's training side: recipe loading, the loop, the probe, sampler, store and control server.

Importing this package is cheap and torch-free; the torch-using modules are imported on demand.
"""
