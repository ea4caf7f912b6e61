"""Command-line entry points of `trl_era` (`python -m trl_era.scripts.grpo`)."""
