"""The toy type takes no training jobs: the registration names a trainer class, and this one only says which model
and metric it would train for (`aiaas trainer toy` is not part of the plug-in test)."""

from aiaas_toy import MODEL


class ToyTrainer:
    model = MODEL
    metric = "accuracy"
