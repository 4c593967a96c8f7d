"""Launching training commands: here (a process, torchrun) or on SLURM (submitit)."""
