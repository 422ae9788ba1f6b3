"""The loader protocol: what the trainer asks of every data source, and nothing more.

Our shards (data/stream.py ShardLoader), the embedded synthetic corpus (data/loader.py
SyntheticLoader), the truncated-BPTT row streams (data/row_streams.py) and any new source
implement it; `data.loader.build_loader` picks one from the [data] config, so the trainer
never knows which it has. State is a small dict saved with every checkpoint (global, so a
resume with another number of data-parallel ranks continues exactly).
Optional, for a mixture of sources (data/mixture.py): `describe() -> list[str]` (printed and
logged once at start) and `tb_scalars() -> dict` (added to the TensorBoard scalars).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from data.batch import Batch


@runtime_checkable
class Loader(Protocol):
    def next_batch(self) -> Batch:
        """This data-parallel rank's rows of the next step's micro-batch."""
        ...

    def state_dict(self) -> dict:
        """Where the stream stands (json-serialisable)."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Continue from a state_dict; a state of another source is a one-line DataError/ValueError."""
        ...

    @property
    def vocab_size(self) -> int:
        """The number of token ids the source can produce (the model's vocabulary must hold them)."""
        ...

    @property
    def skipped_documents(self) -> int | None:
        """Corrupt documents skipped so far (data.skip_corrupt); None for a source that never skips."""
        ...
