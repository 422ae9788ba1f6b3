"""Training: entry point, config, loop, optimizer and schedules, checkpoints, metrics, evaluation."""
