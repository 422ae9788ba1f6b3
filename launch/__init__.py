"""The launcher: local torchrun, SLURM sbatch rendering and submission, dry runs."""
