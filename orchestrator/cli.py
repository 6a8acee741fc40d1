"""The ``tightrope`` command. Each subcommand lives in the module that owns it; this file only parses.

Exit codes: 0 ok, 1 the work failed, 2 bad input (nothing was started), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from trainables.config import ConfigError

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """Bad input found by a command: printed without a traceback, exit code 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tightrope",
        description="Sweeps of loss-constrained sparse training on Ray Tune, logged to Weights & Biases.",
        epilog="exit codes: 0 ok, 1 the work failed, 2 bad input (nothing started), 130 interrupted")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="run one trial without Ray")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config keys, e.g. train.steps=300")
    t.add_argument("--out", default=None, help="output folder (default: runs/train-<time>)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(handler="orchestrator.train_cmd:run")

    v = sub.add_parser("validate", help="check a sweep spec without starting Ray")
    v.add_argument("spec", help="a sweep spec (YAML)")
    v.set_defaults(handler="orchestrator.spec:validate_cmd")

    s = sub.add_parser("sweep", help="run a sweep spec on Ray Tune")
    s.add_argument("spec", help="a sweep spec (YAML), e.g. sweeps/quickstart.yaml")
    s.add_argument("--address", default=None, help="join a Ray cluster (default: $RAY_ADDRESS, else local)")
    s.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    s.add_argument("--storage", default=None, help="override the spec's storage location")
    s.add_argument("--quiet", action="store_true", help="no live table: a progress line every 30 s")
    s.set_defaults(handler="orchestrator.sweep:run")

    r = sub.add_parser("report", help="rebuild tables, figures and summary from a sweep's Parquet files")
    r.add_argument("dir")
    r.set_defaults(handler="orchestrator.report:run")

    k = sub.add_parser("k8s", help="Kubernetes helpers")
    ksub = k.add_subparsers(dest="k8s_command", required=True)
    kr = ksub.add_parser("render", help="print a RayJob and its ConfigMap for a spec")
    kr.add_argument("spec")
    kr.add_argument("--image", required=True)
    kr.add_argument("--gpus", type=int, default=0, help="GPUs per worker (0 = CPU workers)")
    kr.add_argument("--name", default=None, help="RayJob name (default: from the spec)")
    kr.set_defaults(handler="orchestrator.k8s:render_cmd")
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    args = _parser().parse_args(argv)
    module, func = args.handler.split(":")
    try:
        code = getattr(importlib.import_module(module), func)(args)
    except ConfigError as e:
        print(f"error: invalid configuration\n{e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tightrope validate x.yaml | head -1`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(code or 0)


if __name__ == "__main__":  # `python -m orchestrator.cli`: run the imported module, so its UsageError is the one raised
    from orchestrator.cli import main as _main

    sys.exit(_main())
