"""skipxl: a DeepSpeed-scaled reproduction suite for memory-based Transformers.

Reproduces *Memory-efficient Stochastic methods for Memory-based Transformers*
(Vishnu & Chandra Sekhar, arXiv 2311.08123): a Transformer-XL baseline, Skip-Retain
two-phase training, stochastic cross-head attention, their combination, and BERT +
cross-head attention on GLUE.
"""

from skipxl.errors import SkipxlError

__all__ = ["SkipxlError"]
__version__ = "0.1.0"
