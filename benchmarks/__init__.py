"""Benchmarks, run by hand (see README.md here); a package so their helpers import by name."""
