"""`python -m train --config configs/X.toml [--resume auto|PATH] [--section.key=value ...]`."""
from __future__ import annotations

import argparse
import sys

from train.preemption import ignore_late_signals, install_early

install_early()     # before anything heavy is imported: a SIGTERM while starting still saves and exits 75

from train.config import ConfigError, load_config  # noqa: E402


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(prog="python -m train", description="Train a longweave model.")
    p.add_argument("--config", default="configs/tiny.toml", help="TOML recipe (default: configs/tiny.toml)")
    p.add_argument("--resume", default=None, help="none | auto | checkpoint directory (checkpoint.resume)")
    args, rest = p.parse_known_args(argv)
    return args, rest


def main(argv: list[str] | None = None) -> int:
    args, rest = parse_args(sys.argv[1:] if argv is None else argv)
    if args.resume is not None:
        rest = [*rest, f"--checkpoint.resume={args.resume}"]
    try:
        cfg = load_config(args.config, rest)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from data.errors import DataError
    from parallel.dims import LayoutError
    from train.errors import RunError
    from train.loop import train
    from train.preemption import record_failure

    try:
        result = train(cfg)
    except (LayoutError, DataError, RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        record_failure(cfg.train.run_dir, 2, e)
        return 2
    except BaseException as e:
        record_failure(cfg.train.run_dir, 1, e)
        raise
    finally:
        from parallel.distributed import destroy

        destroy()
        ignore_late_signals()
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
