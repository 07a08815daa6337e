"""Training: losses, checkpoints, the epoch loop, target training and evaluation."""
