"""Benchmarks: the same client-API workload against this homeserver and Synapse, side by side."""
