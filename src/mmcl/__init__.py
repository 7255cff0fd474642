"""mmcl: continual learning of multimodal large language models.

One package for a benchmark stream, a Hugging Face MLLM, a continual-learning
method, one command, and a full accuracy matrix with the standard metrics.
"""

__version__ = "0.1.0"
