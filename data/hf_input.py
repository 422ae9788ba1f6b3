"""Hugging Face `datasets` as input of `python -m data.prepare --input-hf PATH [--split S] [--field F]`.

PATH is local, never downloaded: a parquet / arrow / json / jsonl file, a directory of them (the
split comes from the file names, as `datasets` infers it: train-*.parquet, test/..., else all is
"train"), or a directory written by `Dataset.save_to_disk`. Everything is streamed
(`streaming=True`; a saved dataset is memory-mapped), so a corpus larger than memory is fine, and
nothing touches the network (run with HF_DATASETS_OFFLINE=1 to be sure). Rows come in input order
as batches of texts; data/prepare.py tokenizes the batches on its worker processes.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from data.errors import DataError

BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".jsonl": "json"}


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("--input-hf needs the datasets package; pip install 'longweave[datasets]'") from None
    return datasets


def open_split(path: str, split: str):
    """An IterableDataset over the rows of `split` in the local dataset at `path`."""
    datasets = _import_datasets()
    p = Path(path)
    if not p.exists():
        raise DataError(f"--input-hf {path}: no such file or directory (only local datasets are read)")
    try:
        if p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file()):
            saved = datasets.load_from_disk(str(p))
            if isinstance(saved, datasets.DatasetDict):
                if split not in saved:
                    raise DataError(f"--input-hf {path} has splits {sorted(saved)}, not {split!r}; pass --split")
                saved = saved[split]
            return saved.to_iterable_dataset()
        if p.is_file():
            builder = BUILDERS.get("".join(p.suffixes[-1:]))
            if builder is None:
                raise DataError(f"--input-hf {path}: unknown file type; use .parquet, .arrow, .json or .jsonl")
            return datasets.load_dataset(builder, data_files={split: str(p)}, split=split, streaming=True)
        return datasets.load_dataset(str(p), split=split, streaming=True)
    except DataError:
        raise
    except (ValueError, FileNotFoundError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"--input-hf {path} (split {split!r}) cannot be read: {first}") from None


def hf_texts(path: str, split: str, field: str, batch_docs: int, skipped) -> Iterator[list[str]]:
    """Batches of the `field` strings of every row, in order; a row without a string there is counted."""
    ds = open_split(path, split)
    for batch in ds.iter(batch_size=batch_docs):
        if field not in batch:
            raise DataError(f"--input-hf {path}: no column {field!r} (columns: {', '.join(sorted(batch))}); "
                            "pass --field NAME")
        values = batch[field]
        texts = [v for v in values if isinstance(v, str)]
        if len(texts) < len(values):
            skipped.add(path, f"row without a string {field!r}", len(values) - len(texts))
        if texts:
            yield texts
