"""Using a trained model: `launch.py evaluate`, `predict` and `export`, each rebuilt from a checkpoint alone.

One module per job on top of `predictor` (the model and the preprocessing its recipe validated with):
`evaluation`, `prediction`, `exporting`; `OnnxPredictor` runs an exported file without the checkpoint;
`ensemble` averages several models (a folds run's) and opens whatever MODEL a command was given. Listing and
transforms come from `segdata`.
"""

from segengine.inference.ensemble import EnsemblePredictor, open_predictor
from segengine.inference.evaluation import EvalResult, evaluate
from segengine.inference.exporting import EXPORT_TOLERANCE, ExportResult, export
from segengine.inference.prediction import PredictResult, predict
from segengine.inference.predictor import InferenceError, OnnxPredictor, Predictor

__all__ = ["EXPORT_TOLERANCE", "EnsemblePredictor", "EvalResult", "ExportResult", "InferenceError", "OnnxPredictor",
           "PredictResult", "Predictor", "evaluate", "export", "open_predictor", "predict"]
