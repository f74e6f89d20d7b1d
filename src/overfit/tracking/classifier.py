"""The registered model: the probability of class 1 for each row of a table with columns x1
and x2, from a Keras model of the sweep.

MLflow runs this file to load the model (models from code): it is copied into the model's
folder, so whoever serves the model needs MLflow, Keras and TensorFlow, not this project.
"""

import os
from typing import Any

import mlflow.models
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

FEATURES = ["x1", "x2"]


class MoonsClassifier(PythonModel):
    """Class-1 probabilities of a Dense(relu) -> Dense(sigmoid) Keras model, one per row."""

    def load_context(self, context: Any) -> None:
        # TensorFlow prints its C++ start-up lines as it loads, before it reads
        # TF_CPP_MIN_LOG_LEVEL: stderr goes to /dev/null for the import (this file runs without
        # the project, so it cannot use overfit.runtime.tensorflow_quiet). Errors still raise.
        saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 2)
            import keras
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(null)

        path = context.artifacts["keras_model"]
        self.model = keras.models.load_model(path, safe_mode=True, compile=False)

    # A DataFrame hint: MLflow then checks rows against the signature the model is saved
    # with, rather than inferring another from the hint.
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        x = np.asarray(model_input[FEATURES], dtype=np.float32)
        if not np.isfinite(x).all():  # MLflow turns a JSON null into NaN and lets it through
            raise MlflowException.invalid_parameter_value("x1 and x2 must be finite numbers")
        if len(x) == 0:
            return np.empty(0, np.float32)
        return self.model.predict(x, batch_size=len(x), verbose=0)[:, 0]


mlflow.models.set_model(MoonsClassifier())
