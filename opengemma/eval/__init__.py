"""Evaluation: academic and safety benchmarks, sandboxed code execution, and the memorization study."""
