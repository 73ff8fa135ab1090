"""hpcserve: serve a vLLM model across SLURM nodes and reach it from a laptop."""

__version__ = "0.1.0"
