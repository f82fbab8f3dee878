"""Training: model construction, the loop, checkpoints and resume."""
