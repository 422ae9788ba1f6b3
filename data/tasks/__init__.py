"""RULER-style synthetic tasks: generators of token-exact prompts and their exact-match scorers.

Each task is one module in this package that registers itself with `@register`; the modules
are discovered at import, so adding a task is adding one file. A task is used two ways:
- evaluation (train/task_eval.py): `task.sample(tok, length, depth, seed)` → a prompt of exactly
  `length` tokens, scored by `task.score(generated_text, sample)` in [0, 1];
- training (data/tasks/corpus.py): `task.document(tok, length, seed)` → the same prompt shape
  followed by its answer and the end token, `length` tokens at most.
"""
from __future__ import annotations

import importlib
import pkgutil

from data.tasks.base import Sample, TaskError, case_seed, text_ids
from data.tasks.registry import TASKS, Task, get_task, register, task_names

_SKIP = {"base", "registry", "corpus"}
for _m in pkgutil.iter_modules(__path__):
    if _m.name not in _SKIP:
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["Sample", "TASKS", "Task", "TaskError", "case_seed", "get_task", "register", "task_names", "text_ids"]
