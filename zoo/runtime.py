"""The one place zoo asks the Keras backend about devices, precision, determinism and compiled calls.

Models, heads and the training loop are plain Keras; what differs between backends (which
devices there are, how a call is compiled, how runs are made deterministic, how several GPUs
are used) is answered here, so the rest of the run code does not import TensorFlow, JAX or
PyTorch for it. TensorFlow and JAX train on all of a machine's devices (MirroredStrategy,
keras.distribution.DataParallel); PyTorch trains on one.
Keras is imported only when asked about: a driver that starts workers of other backends
computes their environment (:func:`backend_environment`) without importing it.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import platform

LOGICAL_CPUS_ENV = "ZOO_LOGICAL_CPUS"
_BACKEND_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch", "numpy": "numpy"}
_STRATEGY = []  # devices are configured once per process; later runs in a worker reuse the strategy


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # an import hook refusing it, or a half-removed package
        return False


def has_tensorflow() -> bool:
    """Whether TensorFlow is installed: zoo then writes TensorBoard logs and can read
    tensorflow-datasets datasets; the input pipeline is the same either way (zoo.data.pipeline)."""
    return installed("tensorflow")


def backend() -> str:
    """The Keras backend this process runs: tensorflow, jax or torch."""
    import keras

    return keras.backend.backend()


def backend_version() -> str:
    """The version of the backend's own library (TensorFlow's, JAX's, PyTorch's)."""
    module = importlib.import_module(_BACKEND_MODULES.get(backend(), backend()))
    return getattr(module, "__version__", "unknown")


def gpu_names() -> list[str]:
    """The names of the GPUs the backend sees, one per device."""
    name = backend()
    if name == "tensorflow":
        import tensorflow as tf

        return [tf.config.experimental.get_device_details(g).get("device_name", "GPU")
                for g in tf.config.list_physical_devices("GPU")]
    if name == "jax":
        import jax

        return [getattr(d, "device_kind", "GPU") for d in jax.devices() if d.platform == "gpu"]
    if name == "torch":
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return []


def accelerator_memory_bytes() -> int | None:
    """Memory of the backend's first GPU, or None where there is none (or it cannot say)."""
    if not gpu_names():
        return None
    name = backend()
    try:
        if name == "jax":
            import jax

            gpu = next(d for d in jax.devices() if d.platform == "gpu")
            return int((gpu.memory_stats() or {}).get("bytes_limit")) or None
        if name == "torch":
            import torch

            return int(torch.cuda.get_device_properties(0).total_memory)
        if name == "tensorflow":
            import tensorflow as tf

            details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
            return int(details.get("memory_limit") or 0) or None
    except (StopIteration, TypeError, ValueError, RuntimeError, IndexError):
        return None
    return None


# Read by each backend when it first opens a GPU: take memory as needed, not most of the device at once
# (TensorFlow maps nearly all of it, JAX 75 %; PyTorch already allocates on demand).
GPU_MEMORY_ON_DEMAND = {"TF_FORCE_GPU_ALLOW_GROWTH": "true", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


def take_gpu_memory_on_demand(environ=None) -> None:
    """Make this process (or the environment ``environ`` of one to start) take GPU memory as it needs it.

    For processes that share a GPU with others: `zoo serve` and `zoo predict` beside a suite that trains,
    and Ray actors given a fraction of a GPU. With each backend's default the one that opens the GPU
    first keeps most of its memory and the next one fails for lack of it. A value already set is kept;
    this must run before the backend first opens the GPU. Training runs keep the defaults, which spare
    them allocations and fragmentation."""
    environ = os.environ if environ is None else environ
    for name, value in GPU_MEMORY_ON_DEMAND.items():
        environ.setdefault(name, value)


def describe_device() -> str:
    """The device runs train on: GPU names, or the CPU model and core count."""
    gpus = gpu_names()
    if gpus:
        return f"{len(gpus)}x {gpus[0]}"
    model_name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            model_name = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {model_name} ({os.cpu_count()} cores)"


# A run's precision: float32; ``mixed``, the device's usual half type; or one named (Keras's policy names).
PRECISIONS = ("float32", "mixed", "mixed_float16", "mixed_bfloat16")


def precision_policy(precision: str) -> str:
    """The Keras dtype policy for a requested precision (PRECISIONS): float32; for ``mixed`` float16
    compute on GPUs (with loss scaling, as timm's AMP default) and bfloat16 on CPUs, which lack fast
    float16; ``mixed_float16`` or ``mixed_bfloat16`` as named (on Ampere and Hopper GPUs bfloat16's
    tensor cores are as fast as float16's and it trains without loss scaling)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "mixed":
        return "mixed_float16" if gpu_names() else "mixed_bfloat16"
    return precision


def make_deterministic(seed: int, xla: bool = False) -> None:
    """Seed Python, NumPy and the backend, and ask the backend for deterministic kernels, so a
    run's numbers follow from its seed alone. ``xla`` on TensorFlow: op determinism stays off, since
    Keras refuses XLA under it (silently falling back to the graph); XLA's own kernels decide then."""
    import keras

    keras.utils.set_random_seed(seed)
    if backend() == "tensorflow":
        import tensorflow as tf

        if xla:  # a worker's earlier run may have turned it on: the setting is process-wide
            from tensorflow.python.framework import config as tf_config

            tf_config.disable_op_determinism()
        else:
            tf.config.experimental.enable_op_determinism()
    elif backend() == "torch":
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)


def forget_tracing_history() -> None:
    """Start TensorFlow's count of tf.function retracing afresh, at the start of a run. It counts per
    Python function across every instance: each run's model makes Keras's train and test functions
    anew from the same code, so a worker's third short run (a small folder, `--set train.epochs=1`)
    was warned "5 out of the last 9 calls ... triggered tf.function retracing" though each function
    traced once. Retracing within a run is still warned of. A no-op on other backends, and where a
    TensorFlow release keeps the count elsewhere."""
    if backend() != "tensorflow":
        return
    try:
        from tensorflow.python.eager.polymorphic_function import polymorphic_function
    except ImportError:
        return
    manager = getattr(polymorphic_function, "_frequent_tracing_detector_manager", None)
    detectors, lock = getattr(manager, "_detectors", None), getattr(manager, "_lock", None)
    if detectors is not None and lock is not None:
        with lock:
            detectors.clear()


@contextlib.contextmanager
def initial_values_on_host():
    """On JAX, within this block, Keras's initializers draw new weights with NumPy on the host and put
    them on the device as they are (random uniform, normal and truncated normal, zeros, ones, constants).
    JAX's own draws compile one XLA program per weight shape: building mobilenet_v3_small compiled 59 of
    them in 17 s on a 2-core CPU, and an optimizer's zero slots as many again, before the first step.
    The values follow from Keras's seeds (``keras.utils.set_random_seed``, an initializer's own seed)
    as JAX's do, but are other numbers: a JAX run's initial weights are NumPy's draws from the same
    seeds. Elsewhere, or where Keras's internals are not the ones this was written for (Keras 3.15),
    nothing changes."""
    if backend() != "jax":
        yield
        return
    try:
        import jax
        import keras
        import numpy as np
        from keras.src.backend.jax import random as jax_random
        from keras.src.initializers import constant_initializers
        from keras.src.random.seed_generator import draw_seed
    except ImportError:
        yield
        return
    original = {(jax_random, name): getattr(jax_random, name, None) for name in ("uniform", "normal", "truncated_normal")}
    original.update({(constant_initializers.Zeros, "__call__"): constant_initializers.Zeros.__call__,
                     (constant_initializers.Ones, "__call__"): constant_initializers.Ones.__call__,
                     (constant_initializers.Constant, "__call__"): constant_initializers.Constant.__call__})
    if None in original.values():
        yield
        return

    def host_dtype(dtype):
        name = keras.backend.standardize_dtype(dtype or keras.config.floatx())
        if name == "bfloat16":
            import ml_dtypes  # JAX's own dependency: NumPy's bfloat16

            return ml_dtypes.bfloat16
        return np.dtype(name)

    def drawn(name, draw):
        fallback = original[(jax_random, name)]

        def function(shape, *args, dtype=None, seed=None, **kwargs):
            key = draw_seed(seed)
            if isinstance(key, jax.core.Tracer):  # inside a trace (a layer's call): JAX's own draw
                return fallback(shape, *args, dtype=dtype, seed=seed, **kwargs)
            rng = np.random.default_rng([int(v) for v in np.asarray(key).astype(np.uint32).ravel()])
            return jax.device_put(draw(rng, tuple(shape), *args, **kwargs).astype(host_dtype(dtype)))

        return function

    def truncated(rng, shape, mean=0.0, stddev=1.0):
        # Keras's truncated normal: within two standard deviations, the rest drawn again.
        values = rng.standard_normal(int(np.prod(shape)))
        outside = np.abs(values) > 2.0
        while outside.any():
            values[outside] = rng.standard_normal(int(outside.sum()))
            outside = np.abs(values) > 2.0
        return values.reshape(shape) * stddev + mean

    replaced = {
        (jax_random, "uniform"): drawn("uniform", lambda rng, shape, minval=0.0, maxval=1.0:
                                       rng.uniform(minval, maxval, size=shape)),
        (jax_random, "normal"): drawn("normal", lambda rng, shape, mean=0.0, stddev=1.0:
                                      rng.normal(mean, stddev, size=shape)),
        (jax_random, "truncated_normal"): drawn("truncated_normal", truncated),
        # jnp.zeros and jnp.asarray of NumPy compile per shape too; device_put does not.
        (constant_initializers.Zeros, "__call__"):
            lambda self, shape, dtype=None: jax.device_put(np.zeros(tuple(shape), host_dtype(dtype))),
        (constant_initializers.Ones, "__call__"):
            lambda self, shape, dtype=None: jax.device_put(np.ones(tuple(shape), host_dtype(dtype))),
        (constant_initializers.Constant, "__call__"):  # ConvNeXt's layer scale
            lambda self, shape, dtype=None: jax.device_put(
                np.full(tuple(shape), np.asarray(self.value), host_dtype(dtype))),
    }
    for (owner, name), function in replaced.items():
        setattr(owner, name, function)
    try:
        yield
    finally:
        for (owner, name), function in original.items():
            setattr(owner, name, function)


class KerasDistribution:
    """What the run code asks of a strategy (``scope()``, ``num_replicas_in_sync``) on backends
    that distribute through ``keras.distribution`` instead of ``tf.distribute``."""

    def __init__(self, replicas: int):
        self.num_replicas_in_sync = replicas

    def scope(self):
        return contextlib.nullcontext()


def logical_cpus() -> int:
    """ZOO_LOGICAL_CPUS: how many devices to split the CPU into (0 or 1: no split)."""
    return int(os.environ.get(LOGICAL_CPUS_ENV, "0") or 0)


def backend_environment(backend_name: str | None, base: dict | None = None) -> dict:
    """The environment of a new process that runs ``backend_name`` (None: as this one). Keras reads
    KERAS_BACKEND, and JAX its host device count, once, at import: a process's backend and its
    devices are chosen before it starts."""
    env = dict(os.environ if base is None else base)
    if backend_name:
        env["KERAS_BACKEND"] = backend_name
    count = logical_cpus()
    if count > 1 and (backend_name or env.get("KERAS_BACKEND")) == "jax":
        flag = f"--xla_force_host_platform_device_count={count}"
        env["XLA_FLAGS"] = " ".join(part for part in (env.get("XLA_FLAGS", ""), flag) if part)
    return env


def choose_strategy():
    """All the devices of this machine, on every backend: TensorFlow's MirroredStrategy over its
    GPUs, ``keras.distribution.DataParallel`` over JAX's devices, else one device.

    With ZOO_LOGICAL_CPUS=N (N > 1) the CPU is split into N logical devices (TensorFlow's
    logical devices; JAX's host devices, set by :func:`backend_environment` when the process
    starts) and data-parallel training runs over them, which exercises the multi-device path on
    a machine without GPUs.
    """
    if _STRATEGY:
        return _STRATEGY[0]
    if backend() == "jax":
        import jax

        import keras

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        devices = gpus or (jax.devices("cpu") if logical_cpus() > 1 else [])
        if len(devices) > 1:
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        strategy = KerasDistribution(max(1, len(devices)))
        _STRATEGY.append(strategy)
        return strategy
    if backend() != "tensorflow":
        _STRATEGY.append(KerasDistribution(1))  # one device: PyTorch's data-parallel path is not wired yet
        return _STRATEGY[0]
    import tensorflow as tf

    count = logical_cpus()
    if count > 1 and not tf.config.list_physical_devices("GPU"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
        strategy = tf.distribute.MirroredStrategy([f"/cpu:{index}" for index in range(count)])
    elif len(tf.config.list_logical_devices("GPU")) > 1:
        strategy = tf.distribute.MirroredStrategy()
    else:
        return tf.distribute.get_strategy()
    _STRATEGY.append(strategy)
    return strategy


def compiled_function(function):
    """``function`` traced into one graph on TensorFlow (retraced only for new shapes); as is on
    backends whose eager calls are already compiled or that trace elsewhere."""
    if backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(function, reduce_retracing=True)
    return function


def _padded_to_first_size(predict_on_batch):
    """``predict_on_batch`` (a compiled predict step) with every batch padded to the first batch's size
    and the outputs cut back: a split's short last batch then compiles nothing new (JAX compiles once
    per input shape; each example is predicted alone, so the padding changes no output). A single
    image is predicted alone, as latency measurements need."""
    import keras
    import numpy as np

    sizes = []

    def predict(images):
        images = list(images) if isinstance(images, tuple) else images
        count = int(keras.tree.flatten(images)[0].shape[0])
        if not sizes:
            sizes.append(count)
        missing = sizes[0] - count
        if missing <= 0 or count == 1:  # one image stays one: a latency measurement times one image
            return predict_on_batch(images)
        # Padded where the batch is (the input pipeline's batches are already on the backend's device).
        ops = np if isinstance(keras.tree.flatten(images)[0], np.ndarray) else keras.ops
        pad = lambda x: ops.concatenate([x, ops.repeat(x[-1:], missing, axis=0)])  # noqa: E731
        outputs = predict_on_batch(keras.tree.map_structure(pad, images))
        return keras.tree.map_structure(lambda y: y[:count], outputs)

    if hasattr(predict_on_batch, "lowered"):
        predict.lowered = predict_on_batch.lowered
    return predict


def variable_values(model) -> tuple[list, list]:
    """The current values of ``model``'s trainable and non-trainable variables, as Keras's stateless_call
    takes them."""
    return [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables]


def lowered_on_variables(jitted, model, images):
    """``jitted(trainable, non_trainable, images)`` (a jax.jit of ``model``'s stateless call) traced and
    lowered for batches like ``images`` (shape-and-type stand-ins) and the variables as they are now, to
    compile ahead (zoo.harness.compilation.CompiledAhead): a later call with such arrays finds the program
    in JAX's caches. A committed array keeps its placement (JAX keeps a program per placement); an
    uncommitted one, as a single-device run's arrays are, gets none."""
    import jax

    def stand_in(array):
        committed = getattr(array, "committed", False)
        return jax.ShapeDtypeStruct(array.shape, array.dtype, sharding=array.sharding if committed else None)

    trainable, non_trainable = jax.tree_util.tree_map(stand_in, variable_values(model))
    return jitted.lower(trainable, non_trainable, images)


def _jitted_inference(model):
    """On JAX, one device: ``model(images, training=False)`` jitted as a pure function of the variables
    (Keras's stateless_call), returning device arrays without waiting for them. Keras's
    predict_on_batch copies every batch's outputs to the host before it returns, so the device idles
    while Python prepares the next batch; this lets the caller queue the next batch first
    (:func:`predictions_ahead`). The variables are read at each call: a model trained between calls
    is predicted with its new weights."""
    import jax

    @jax.jit
    def inference(trainable, non_trainable, images):
        return model.stateless_call(trainable, non_trainable, images, training=False)[0]

    def predict(images):
        return inference(*variable_values(model), images)

    predict.lowered = lambda images: lowered_on_variables(inference, model, images)
    return predict


def device_predict(model):
    """``model(images, training=False)`` as one compiled function whose outputs stay on the backend's
    device (NumPy where the backend gives nothing else), so that a loop can queue the next batch
    before reading this one (:func:`predictions_ahead`). Correct under any distribution strategy
    (Keras's predict_on_batch under MirroredStrategy returns one copy of the batch per replica).
    On TensorFlow it is traced once for any batch size: a last short batch or a batch-1 latency
    measurement does not trace the model again; on JAX (one device) jitted once per batch shape,
    batches padded to the first one's size, and the function's ``lowered(images)`` gives the program for
    batches like ``images`` to compile ahead; elsewhere Keras's own compiled predict step, padded
    likewise."""
    import keras

    if backend() == "tensorflow":
        import tensorflow as tf

        specs = [tf.TensorSpec(tensor.shape, tensor.dtype) for tensor in model.inputs]
        signature = [specs[0] if len(specs) == 1 else specs]
        traced = tf.function(lambda images: model(images, training=False), input_signature=signature)
        # Several inputs (a pyramid head on cached features) come as a tuple.
        return lambda images: traced(list(images) if isinstance(images, tuple) else images)
    if backend() == "jax" and keras.distribution.distribution() is None:
        return _padded_to_first_size(_jitted_inference(model))
    # Several devices (keras.distribution places the batch's shards) or PyTorch.
    return _padded_to_first_size(model.predict_on_batch)


def host_outputs(outputs):
    """A prediction's outputs (device tensors, NumPy, a list of either) as NumPy: waits for them."""
    import keras

    return keras.tree.map_structure(keras.ops.convert_to_numpy, outputs)


def compiled_predict(model):
    """``model(images, training=False)`` as one compiled function returning NumPy (see
    :func:`device_predict`; a feature pyramid comes back as a list of arrays)."""
    predict = device_predict(model)
    return lambda images: host_outputs(predict(images))


def predictions_ahead(predict, batches, images_of=None):
    """``(batch, outputs as NumPy)`` for each of ``batches``, in order, with ``predict`` (returning
    device tensors, as :func:`device_predict`'s function does, or NumPy) called on the next batch
    before this one's outputs are read: the device computes the next batch while the host copies
    and scores this one, as timm's and Keras's own predict loops keep it busy. ``images_of(batch)``
    picks the model input out of a batch (default: the batch itself)."""
    pending = None
    for batch in batches:
        outputs = predict(batch if images_of is None else images_of(batch))
        if pending is not None:
            yield pending[0], host_outputs(pending[1])
        pending = (batch, outputs)
    if pending is not None:
        yield pending[0], host_outputs(pending[1])
