"""BERT-family fine-tuning on GLUE with stochastic cross-head attention (arXiv 2311.08123).

Modules: :mod:`~skipxl.glue.cross_head_attention` (the ``cross_head_sdpa`` / ``cross_head_eager``
attention implementations), :mod:`~skipxl.glue.tasks` (readers for the nine GLUE tasks),
:mod:`~skipxl.glue.metrics`, :mod:`~skipxl.glue.model` (backbones), :mod:`~skipxl.glue.finetune`
(one DeepSpeed run), :mod:`~skipxl.glue.sweep` (resumable seed sweeps) and
:mod:`~skipxl.glue.report` (spread across seeds and its bootstrap CI).

Parameter-efficient fine-tuning of a frozen backbone (``--method``): :mod:`~skipxl.glue.methods`
(registry, trained-parameter rule, parameter formulas), :mod:`~skipxl.glue.spartan` (SPARTAN
sparse hierarchical memory, arXiv 2211.16634), :mod:`~skipxl.glue.adapters` (Houlsby/Pfeiffer
bottleneck adapters), :mod:`~skipxl.glue.peft_methods` (LoRA via peft),
:mod:`~skipxl.glue.sampling` (few-shot stratified samples), :mod:`~skipxl.glue.method_io`
(save/load a trained method alone), :mod:`~skipxl.glue.cost` (parameters, bytes, speed, memory)
and :mod:`~skipxl.glue.parents` (SPARTAN parent usage).

Nothing heavy is imported here: import the submodule you need.
"""

__all__ = [
    "adapters",
    "cost",
    "cross_head_attention",
    "finetune",
    "method_io",
    "methods",
    "metrics",
    "model",
    "parents",
    "peft_methods",
    "report",
    "runlog",
    "sampling",
    "spartan",
    "sweep",
    "tasks",
]
