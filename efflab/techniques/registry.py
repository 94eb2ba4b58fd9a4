"""The one technique verb, torchao style: ``apply_(model, config)``.

Each technique module registers a handler for its config class (:func:`register`);
:func:`apply_` finds the handler by the config's type, transforms ``model`` in place and
returns it::

    apply_(model, AttentionConfig("naive"))
    apply_(model, QuantizationConfig("int8-weight"))
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

Handler = Callable[[nn.Module, object], nn.Module]
_HANDLERS: dict[type, Handler] = {}


def register(config_cls: type) -> Callable[[Handler], Handler]:
    """Decorator: the wrapped ``handler(model, config)`` applies configs of ``config_cls``."""

    def deco(handler: Handler) -> Handler:
        _HANDLERS[config_cls] = handler
        return handler

    return deco


def registered() -> tuple[type, ...]:
    """The config classes :func:`apply_` knows, in registration order."""
    return tuple(_HANDLERS)


def apply_(model: nn.Module, config) -> nn.Module:
    """Transform ``model`` in place as ``config`` says and return it.

    The handler is chosen by ``type(config)`` (a technique's ``<Technique>Config``); any other
    type raises TypeError naming it and the config types that are known."""
    handler = _HANDLERS.get(type(config))
    if handler is None:
        known = ", ".join(c.__name__ for c in _HANDLERS)
        raise TypeError(f"apply_ has no technique for config={config!r} of type "
                        f"{type(config).__name__}; config must be one of: {known}")
    handler(model, config)
    return model


__all__ = ["apply_", "register", "registered"]
