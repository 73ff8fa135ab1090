"""Where cluster commands run (here or over SSH) and the one module that speaks SLURM."""
