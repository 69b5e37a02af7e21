"""`stagebook` on the command line: parse arguments, call the library, print one line per outcome."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .errors import StagebookError


def _run(args) -> None:
    from .execute import run_stage
    result = run_stage(args.stage, args.set or [], track=not args.no_track, log_output=args.log_output)
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(result.metrics.items()))
    print(f"stagebook: {result.stage.name} done{f' (MLflow run {result.run_id})' if result.run_id else ''}: {shown or 'no metrics'}")


def _embed_digits(args) -> None:
    from .embedded import write_digits
    count = write_digits(Path(args.out), args.per_class)
    print(f"stagebook: wrote {count} digit images to {args.out}")


def _stages(args) -> None:
    from .project import find_root, stages
    for stage in stages(find_root()):
        print(stage.name)


def _lineage(args) -> None:
    import json

    from .lineage import compute
    from .project import find_root
    print(json.dumps(compute(find_root(), "n/a").as_dict(), indent=2))


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="stagebook", description="Run and track the stage notebooks of a stagebook project.")
    top.add_argument("--version", action="version", version=f"stagebook {__version__}")
    sub = top.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute one stage notebook with its params, tracked in MLflow")
    run.add_argument("stage", help="04, 04_tuning or nbs/04_tuning.ipynb")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one parameter (repeatable)")
    run.add_argument("--no-track", action="store_true", help="do not record an MLflow run")
    run.add_argument("--log-output", action="store_true", help="stream the notebook's output while it runs")
    run.set_defaults(func=_run)

    embed = sub.add_parser("embed-digits", help="write scikit-learn's bundled digits as a folder-per-class PNG tree")
    embed.add_argument("out", help="folder to write, e.g. data/raw/digits")
    embed.add_argument("--per-class", type=int, default=0, help="keep only the first N images of each class")
    embed.set_defaults(func=_embed_digits)

    sub.add_parser("stages", help="list the project's stages in order").set_defaults(func=_stages)
    sub.add_parser("lineage", help="print the current code commit, data version and model hash").set_defaults(func=_lineage)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except StagebookError as err:
        print(f"stagebook: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stagebook: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
