"""Memory accounting: prove (or refute) "no additional memory" per layer, step and variant.

arXiv 2311.08123 claims Skip-Retain and stochastic cross-head attention add no memory to
a Transformer-XL. This package measures it:

* :mod:`~skipxl.profiling.saved_tensors`: bytes autograd saves for backward, per layer;
* :mod:`~skipxl.profiling.state_bytes`: Transformer-XL memory bytes, and the parameter /
  gradient / optimizer bytes a DeepSpeed engine holds per rank (vs DeepSpeed's estimator);
* :mod:`~skipxl.profiling.peak`: process peak (CUDA allocator or RSS high-water mark);
* :mod:`~skipxl.profiling.estimate`: the analytic activation bytes of a step;
* :mod:`~skipxl.profiling.profiler`: :class:`MemoryProfiler`, off by default, per-step
  records to TensorBoard and JSON;

The ``skipxl memory`` command that trains the variants under the profiler through DeepSpeed is
:mod:`skipxl.engine.memory`: this package sits below the engine and imports none of it.
"""

from skipxl.profiling.estimate import ActivationEstimate, DTypeRule, estimate_step, layer_bytes
from skipxl.profiling.peak import PeakReading, PeakTracker, run_isolated
from skipxl.profiling.profiler import MemoryProfiler
from skipxl.profiling.saved_tensors import SavedBytes, SavedTensorAccountant, measure_saved
from skipxl.profiling.state_bytes import (
    MemsBytes,
    ModelStateBytes,
    StateEstimate,
    deepspeed_state_estimate,
    mems_bytes,
    model_state_bytes,
)

__all__ = [
    "ActivationEstimate",
    "DTypeRule",
    "MemoryProfiler",
    "MemsBytes",
    "ModelStateBytes",
    "PeakReading",
    "PeakTracker",
    "SavedBytes",
    "SavedTensorAccountant",
    "StateEstimate",
    "deepspeed_state_estimate",
    "estimate_step",
    "layer_bytes",
    "measure_saved",
    "mems_bytes",
    "model_state_bytes",
    "run_isolated",
]
