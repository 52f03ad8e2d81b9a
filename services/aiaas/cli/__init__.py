"""The `aiaas` command (`main.py`) and what each model type adds to it (`model_cli.py`)."""
