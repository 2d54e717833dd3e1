"""Using a trained model: `launch.py evaluate`, `predict` and `export`, each rebuilt from a checkpoint alone.

One module per job on top of `predictor` (the model and the preprocessing its recipe validated with):
`evaluation`, `prediction`, `exporting`; `OnnxPredictor` runs an exported file without the checkpoint. Listing
and transforms come from `segdata`.
"""

from segengine.inference.evaluation import EvalResult, evaluate
from segengine.inference.exporting import EXPORT_TOLERANCE, ExportResult, export
from segengine.inference.prediction import PredictResult, predict
from segengine.inference.predictor import InferenceError, OnnxPredictor, Predictor, open_predictor

__all__ = ["EXPORT_TOLERANCE", "EvalResult", "ExportResult", "InferenceError", "OnnxPredictor", "PredictResult",
           "Predictor", "evaluate", "export", "open_predictor", "predict"]
