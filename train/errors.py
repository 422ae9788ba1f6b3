"""RunError: a problem with the run's own files that the user must look at (a checkpoint that is
missing, for another model or unreadable; a run directory held by another run; a full or
read-only disk; a run that diverged). The CLI prints it as one line and exits 2."""
from __future__ import annotations


class RunError(RuntimeError):
    """One-line, user-facing: what is wrong with the run and how to fix it."""
