"""Evaluation tasks: the kinds in base.py, one small file per benchmark, and the registry (registry.py)."""
