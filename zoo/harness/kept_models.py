"""Compiled heads kept between the runs of one worker.

A sweep over seeds and learning rates on cached features trains the same small head many
times. Tracing its training and evaluation functions costs about half a second a run, more
than training it: so a worker keeps each compiled head, and a later run whose head has the
same architecture and the same compile settings trains the kept model instead, after giving
it its own fresh model's initial variables (weights, BatchNorm statistics, dropout seed
states) and a fresh optimizer state (step count, moments, learning rate). The traced
functions are the same graph, so the numbers are the same as with a newly compiled model
(tests/test_faults.py runs a seed first and second in its worker and compares predictions).

What only sets initial values (initializers, seeds) is left out of the identity, as the
values themselves are copied; anything else that differs (a layer, a name, the loss, the
optimizer's settings other than a constant learning rate, XLA, the distribution strategy)
compiles a new model. A run that fails drops every kept model, so nothing half-trained or
left mid-fit by an error is reused. TensorFlow only, for now (see ``identity``).
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict

KEEP = 4  # heads kept per worker: a suite rarely alternates between more architectures

_kept: OrderedDict[str, object] = OrderedDict()


def _without_initial_values(config):
    if isinstance(config, dict):
        return {k: _without_initial_values(v) for k, v in config.items()
                if k != "seed" and not k.endswith("_initializer")}
    if isinstance(config, (list, tuple)):
        return [_without_initial_values(v) for v in config]
    return config


def _serialized(value):
    import keras

    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_serialized(v) for v in value]
    if isinstance(value, dict):
        return {k: _serialized(v) for k, v in value.items()}
    return keras.saving.serialize_keras_object(value)


def identity(model, compile_kwargs: dict, strategy) -> str | None:
    """What the traced functions of ``model`` compiled with ``compile_kwargs`` depend on, as a
    key; None when the model cannot be kept (a backend other than TensorFlow, or settings
    that do not serialise)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        # On JAX a kept head trained from copied initial state gave slightly different numbers
        # from a new one (measured: up to 0.018 in a probability), so it is not kept there.
        return None
    optimizer = compile_kwargs["optimizer"]
    settings = dict(optimizer.get_config())
    rate = settings.pop("learning_rate")
    if not isinstance(rate, (int, float)):
        settings["learning_rate"] = _serialized(rate)  # a schedule is traced into the graph
    settings.pop("name", None)
    description = {
        "model": _without_initial_values(model.get_config()), "class": type(model).__name__,
        "optimizer": [type(optimizer).__name__, _serialized(settings)],
        "compile": _serialized({k: v for k, v in compile_kwargs.items() if k != "optimizer"}),
        "strategy": id(strategy),
    }
    try:
        text = json.dumps(description, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return None
    return hashlib.sha1(text.encode()).hexdigest()


def compiled(model, compile_kwargs: dict, strategy):
    """``model`` compiled with ``compile_kwargs``, or a kept model of the same identity given
    ``model``'s initial variables and a fresh optimizer state; the caller trains what is returned."""
    key = identity(model, compile_kwargs, strategy)
    kept = _kept.get(key) if key else None
    if kept is not None and _take_initial_state(kept, model, compile_kwargs["optimizer"]):
        _kept.move_to_end(key)
        return kept
    model.compile(**compile_kwargs)
    if key:
        _kept[key] = model
        while len(_kept) > KEEP:
            _kept.popitem(last=False)
    return model


def _take_initial_state(kept, fresh, optimizer) -> bool:
    """Copy ``fresh``'s variables and ``optimizer``'s initial state into ``kept``; False (nothing
    changed) when they do not line up one to one."""
    targets, sources = kept.variables, fresh.variables
    if len(targets) != len(sources) or any(t.shape != s.shape or t.dtype != s.dtype
                                           for t, s in zip(targets, sources)):
        return False
    if type(kept.optimizer) is not type(optimizer):  # e.g. wrapped for loss scaling
        return False
    optimizer.build(kept.trainable_variables)
    if not kept.optimizer.built:  # compiled, never trained
        kept.optimizer.build(kept.trainable_variables)
    old, new = kept.optimizer.variables, optimizer.variables
    if len(old) != len(new) or any(o.shape != n.shape for o, n in zip(old, new)):
        return False
    for target, source in zip(targets, sources):
        target.assign(source)
    for target, source in zip(old, new):
        target.assign(source)
    # Keras keeps the validation iterator on the model between epochs and deletes it after fit;
    # an error inside fit would leave the old run's validation data there.
    kept.__dict__.pop("_eval_epoch_iterator", None)
    return True


def forget() -> None:
    """Drop every kept model (after a failed run)."""
    _kept.clear()
