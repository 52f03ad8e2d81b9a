"""The toy type takes no training jobs worth the name: its trainer registers the same graph again."""

from aiaas_toy import MODEL


class ToyTrainer:
    model = MODEL
    metric = "accuracy"
