"""`python -m train --config configs/X.toml [--resume auto|PATH] [--section.key=value ...]`."""
from __future__ import annotations

import argparse
import os
import sys

from train.preemption import ignore_late_signals, install_early

install_early()     # before anything heavy is imported: a SIGTERM while starting still saves and exits 75

from train.config import ConfigError, dump_toml, load_config  # noqa: E402

EPILOG = """config keys (override any with --section.key=value or --section.key value; a recipe's TOML
sets them under [section]):"""


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(prog="python -m train", description="Train a longweave model.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    p.add_argument("-h", "--help", action="store_true", help="show this message (every config key) and exit")
    p.add_argument("--config", default="configs/tiny.toml", help="TOML recipe (default: configs/tiny.toml)")
    p.add_argument("--resume", default=None, help="none | auto | checkpoint directory (checkpoint.resume)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as TOML and exit")
    args, rest = p.parse_known_args(argv)
    if args.help:
        from train.config_help import keys_text

        print(p.format_help() + "\n" + EPILOG + keys_text())
        raise SystemExit(0)
    return args, rest


def main(argv: list[str] | None = None) -> int:
    args, rest = parse_args(sys.argv[1:] if argv is None else argv)
    if args.resume is not None:
        rest = [*rest, f"--checkpoint.resume={args.resume}"]
    from train.threads import configure_threads
    from train.wandb_log import require_wandb

    try:
        cfg = load_config(args.config, rest)
        if args.print_config:
            print(dump_toml(cfg), end="")
            return 0
        threads = configure_threads(cfg.train.threads)
        require_wandb(cfg.metrics.wandb)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(threads.line(), flush=True)
    from data.errors import DataError
    from parallel.dims import LayoutError
    from train.errors import RunError
    from train.loop import train
    from train.preemption import record_failure

    try:
        result = train(cfg)
    except (ConfigError, LayoutError, DataError, RunError) as e:   # user errors found while setting up: exit 2
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
