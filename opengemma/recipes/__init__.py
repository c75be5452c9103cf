"""Training recipes: plain scripts launched with `python -m opengemma.recipes.X` or `torchrun -m ...`."""
