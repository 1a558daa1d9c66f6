"""Training engine: DeepSpeed set-up, the training loop, evaluation, checkpoints, logging."""
