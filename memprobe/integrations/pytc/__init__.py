"""PyTorch Connectomics: its auto-planner's API (`compat`), its YAML configs, planned for real."""
