"""BERT-family fine-tuning on GLUE with stochastic cross-head attention (arXiv 2311.08123).

Modules: :mod:`~skipxl.glue.cross_head_attention` (the ``cross_head_sdpa`` / ``cross_head_eager``
attention implementations), :mod:`~skipxl.glue.tasks` (readers for the nine GLUE tasks),
:mod:`~skipxl.glue.metrics`, :mod:`~skipxl.glue.model` (backbones), :mod:`~skipxl.glue.finetune`
(one DeepSpeed run), :mod:`~skipxl.glue.sweep` (resumable seed sweeps) and
:mod:`~skipxl.glue.report` (spread across seeds and its bootstrap CI).

Nothing heavy is imported here: import the submodule you need.
"""

__all__ = ["cross_head_attention", "finetune", "metrics", "model", "report", "runlog", "sweep", "tasks"]
