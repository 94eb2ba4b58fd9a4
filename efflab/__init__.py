"""efflab: a hands-on lab for machine-learning efficiency.

Toggle a technique on a real GPT, measure memory, latency, throughput and quality, and see
theory's prediction beside each measurement.

    import efflab
    rec = efflab.measure(efflab.Knobs(batch_size=8), preset="cpu-small", workload="train")
    df = efflab.sweep(efflab.Knobs(), vary={"batch_size": [1, 2, 4, 8]})
"""

import os as _os

import torch as _torch

if not _torch.cuda.is_available():
    # Triton kernels can only run interpreted on a CPU, and the switch must be set before
    # triton decorates anything (torch's FLOP counter imports triton early).
    _os.environ.setdefault("TRITON_INTERPRET", "1")

from efflab import check, theory
from efflab.core.config import PRESETS, ConfigError, Knobs, ModelConfig, get_preset
from efflab.core.data import CorpusError
from efflab.core.model import sample
from efflab.core.store import Store, StoreError, results
from efflab.core.weights import WeightsError, load_model, training_record
from efflab.measurement import SCHEMA, measure
from efflab.measurement.hardware import calibrate
from efflab.measurement.memory import largest_batch, predict_memory
from efflab.measurement.sweeping import sweep
from efflab.measurement.training import train_curves
from efflab.studies.analysis import (
    add_costs,
    batching_table,
    best_under_budget,
    budget_answer,
    calibration_table,
    curve_gaps,
    pareto_front,
    quality_difference,
    saturation,
    technique_table,
)
from efflab.studies.compare import compare_gradients
from efflab.techniques import build
from efflab.ui.explanation import explain
from efflab.ui.predictions import predict

__version__ = "0.1.0"


def __getattr__(name):  # the lab panel pulls in ipywidgets and altair: load it on first use
    if name == "Lab":
        from efflab.ui.lab import Lab

        return Lab
    if name == "compare_prediction":  # a chart: altair loads on first use, like Lab
        from efflab.ui.charts.predictions import compare_prediction

        return compare_prediction
    raise AttributeError(f"module 'efflab' has no attribute {name!r}")


__all__ = ["theory", "quality_difference", "StoreError", "WeightsError", "CorpusError", "PRESETS", "ConfigError", "Knobs", "ModelConfig", "get_preset", "SCHEMA", "measure",
           "Store", "results", "sweep", "Lab", "calibrate", "calibration_table", "load_model",
           "training_record", "sample", "explain", "batching_table", "saturation",
           "largest_batch", "predict_memory", "check", "train_curves", "curve_gaps",
           "pareto_front", "best_under_budget", "technique_table", "compare_gradients",
           "build", "add_costs", "budget_answer", "predict", "compare_prediction", "__version__"]
