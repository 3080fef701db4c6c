"""The Flower side of benchmarks/vs_flower.py (its own virtual environment)."""
