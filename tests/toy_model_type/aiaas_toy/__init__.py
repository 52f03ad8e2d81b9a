"""The `toy` model type: doubles a vector with a one-node ONNX graph. A plug-in's registration is one object."""

from aiaas.model_types import ModelType

MODEL = "toy"

MODEL_TYPE = ModelType(MODEL, metric="accuracy", trainer_class="ToyTrainer", settings_class="ToySettings",
                       package="aiaas_toy", summary="doubles a vector (a plug-in test type)")
