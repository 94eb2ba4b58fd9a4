"""efflab: a hands-on lab for machine-learning efficiency.

Toggle a technique on a real GPT, measure memory, latency, throughput and quality, and see
theory's prediction beside each measurement.

    import efflab
    rec = efflab.measure(efflab.Knobs(batch_size=8), preset="cpu-small", workload="train")
    df = efflab.sweep(efflab.Knobs(), vary={"batch_size": [1, 2, 4, 8]})
"""

from efflab.analysis import batching_table, calibration_table, saturation
from efflab.checkpoint import load_model, training_record
from efflab.config import PRESETS, ConfigError, Knobs, ModelConfig, get_preset
from efflab.exercises import check_throughput
from efflab.explain import explain
from efflab.measure import SCHEMA, measure
from efflab.measure.hardware import calibrate
from efflab.measure.memory import largest_batch, predict_memory
from efflab.model import sample
from efflab.store import Store, results
from efflab.sweep import sweep

__version__ = "0.1.0"


def __getattr__(name):  # the lab panel pulls in ipywidgets and altair: load it on first use
    if name == "Lab":
        from efflab.lab import Lab

        return Lab
    raise AttributeError(f"module 'efflab' has no attribute {name!r}")


__all__ = ["PRESETS", "ConfigError", "Knobs", "ModelConfig", "get_preset", "SCHEMA", "measure",
           "Store", "results", "sweep", "Lab", "calibrate", "calibration_table", "load_model",
           "training_record", "sample", "explain", "batching_table", "saturation",
           "largest_batch", "predict_memory", "check_throughput", "__version__"]
