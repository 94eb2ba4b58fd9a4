"""efflab: a hands-on lab for machine-learning efficiency.

Toggle a technique on a real GPT, measure memory, latency, throughput and quality, and see
theory's prediction beside each measurement.

    import efflab
    rec = efflab.measure(efflab.Knobs(batch_size=8), preset="cpu-small", workload="train")
    df = efflab.sweep(efflab.Knobs(), vary={"batch_size": [1, 2, 4, 8]})

The names below are what the first lesson needs; everything else lives under its layer
(``efflab.core``, ``kernels``, ``techniques``, ``measurement``, ``systems``, ``studies``, ``ui``,
``check``, ``course``; docs/architecture.md draws them). Every name loads on first use, so
``import efflab`` loads nothing but itself: not even torch, and no triton, pandas, altair,
ipywidgets or torch.distributed, until a lesson asks for them.
"""

import importlib as _importlib

# No torch here: the modules that use it import it. Triton's interpreter switch for a machine
# without CUDA is set by efflab.kernels.flash_attention, through which every kernel imports
# triton, before any kernel is decorated.

__version__ = "0.1.0"

# public name -> the module that owns it (loaded on first use)
_OWNERS = {
    "Knobs": "efflab.core.config",
    "ModelConfig": "efflab.core.config",
    "get_preset": "efflab.core.config",
    "resolve_preset": "efflab.core.config",
    "ConfigError": "efflab.core.config",
    "load_model": "efflab.core.weights",
    "training_record": "efflab.core.weights",
    "prepare_checkpoint": "efflab.measurement.training",
    "Store": "efflab.core.store",
    "build": "efflab.techniques",
    "measure": "efflab.measurement",
    "sweep": "efflab.measurement.sweeping",
    "calibrate": "efflab.measurement.hardware",
    "explain": "efflab.ui.explanation",
    "predict": "efflab.ui.predictions",
    "compare_prediction": "efflab.ui.charts.predictions",
    "Lab": "efflab.ui.lab",
}
_SUBMODULES = ("check", "theory")  # learners type efflab.check.<name> and efflab.theory.<name>

__all__ = [*_OWNERS, *_SUBMODULES, "__version__"]


def _lazy_attributes(package: str, namespace: dict, owners: dict[str, str],
                     submodules: tuple[str, ...] = ()):
    """A package's ``__getattr__`` and ``__dir__`` (PEP 562) for names that load on first use:
    each of ``owners`` from the module named beside it, each of ``submodules`` as the module
    ``<package>.<name>``; the value is kept in ``namespace`` (the package's globals), so the
    next lookup is a plain attribute. ``efflab.course`` uses it too."""
    public = [*owners, *submodules]

    def __getattr__(name: str):
        if name in owners:
            value = getattr(_importlib.import_module(owners[name]), name)
        elif name in submodules:
            value = _importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(public))

    return __getattr__, __dir__


__getattr__, __dir__ = _lazy_attributes("efflab", globals(), _OWNERS, _SUBMODULES)
