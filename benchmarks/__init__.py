"""Benchmarks: aioproc against its peers in one run (`python -m benchmarks.peers`)."""
