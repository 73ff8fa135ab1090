"""The sbatch launcher: vLLM flags, rendering, submitting, downloading weights."""
