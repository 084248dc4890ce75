"""Training and evaluation with DeepSpeed (issue 6): config, engine, tasks, loop, checkpoints, metrics."""
