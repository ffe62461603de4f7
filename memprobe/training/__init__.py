"""What a training step is: networks, losses, steps (built-in and users'), checkpointing, autocast."""
