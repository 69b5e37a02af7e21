"""`stagebook` on the command line: parse arguments, call the library, print one line per outcome."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .errors import StagebookError


def _run(args) -> None:
    from .execute import run_stage
    result = run_stage(args.stage, args.set or [], track=not args.no_track, log_output=args.log_output,
                       variant_dir=Path(args.variant_dir) if args.variant_dir else None,
                       parent_run_id=args.parent_run, run_name=args.run_name)
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(result.metrics.items()))
    print(f"stagebook: {result.stage.name} done{f' (MLflow run {result.run_id})' if result.run_id else ''}: {shown or 'no metrics'}")


def _sweep(args) -> int:
    from .params import load_params
    from .project import find_root, resolve_stage
    from .sweep import parse_grid, run_sweep

    stage = resolve_stage(find_root(), args.stage)
    grid = parse_grid(args.grid, stage.params_file, load_params(stage.params_file))
    summary = run_sweep(stage.name, grid, fixed=args.set or [], jobs=args.jobs, samples=args.samples, seed=args.seed,
                        track=not args.no_track, metric=args.metric, maximize=not args.minimize,
                        out_dir=Path(args.out) if args.out else None)
    shown = [c for c in summary.columns if c != "error"]
    print(summary[shown].to_string(index=False))
    for row in summary[summary.status != "ok"].itertuples():
        print(f"stagebook: {row.variant} failed: {row.error}", file=sys.stderr)
    print(f"stagebook: {len(summary)} variants in {summary.attrs['wall_seconds']:.1f} s with {summary.attrs['jobs']}"
          f" parallel process(es)")
    return 0 if (summary.status == "ok").all() else 1


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


def _audit(args) -> None:
    from .audit import audit
    from .manifest import build_manifest

    root = Path.cwd()
    items = build_manifest(Path(args.path), root)
    result = audit(items, root, args.near_threshold, workers=args.workers or None, progress=sys.stderr.isatty())
    summary = result.summary(args.min_class_items)
    for key, value in summary.items():
        print(f"{key:>24}: {', '.join(value) if isinstance(value, list) else value}")
    for row in result.items[result.items.status != "ok"].itertuples():
        print(f"  {row.path}: {row.status}")
    if args.out:
        from .iorw import atomic_write_text
        atomic_write_text(Path(args.out), result.items.to_csv(index=False))
        print(f"stagebook: audit table written to {args.out}")


def _seal(args) -> None:
    from .data import load_splits
    from .project import find_root
    from .seal import write_seal

    root = find_root()
    seal = write_seal(root, load_splits(root, usable_only=False), reason=args.reason)
    print(f"stagebook: sealed {seal['count']} test items as {seal['list_hash'][:16]} (logged in the ledger)")


def _ledger(args) -> int:
    from .project import find_root
    from .seal import Ledger

    ledger = Ledger(find_root())
    for e in ledger.entries():
        detail = ", ".join(f"{k}={str(v)[:16] if k == 'list_hash' else v}" for k, v in e.get("detail", {}).items() if k != "predictions_sha256")
        print(f"{e.get('seq', '?'):>4} {e.get('time', '')} {e.get('event', ''):<6} {e.get('stage', '') or '-':<16}"
              f" model {e.get('model_sha256', '')[:12] or '-':<12} commit {e.get('commit', '')[:10] or '-':<10} {detail}")
    ok, message = ledger.verify()
    print(("stagebook: " if ok else "stagebook: error: ") + message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="stagebook", description="Run and track the stage notebooks of a stagebook project.")
    top.add_argument("--version", action="version", version=f"stagebook {__version__}")
    sub = top.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute one stage notebook with its params, tracked in MLflow")
    run.add_argument("stage", help="04, 04_tuning or nbs/04_tuning.ipynb")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one parameter (repeatable)")
    run.add_argument("--no-track", action="store_true", help="do not record an MLflow run")
    run.add_argument("--log-output", action="store_true", help="stream the notebook's output while it runs")
    run.add_argument("--variant-dir", help=argparse.SUPPRESS)  # set by `stagebook sweep` for each variant
    run.add_argument("--parent-run", help=argparse.SUPPRESS)
    run.add_argument("--run-name", help=argparse.SUPPRESS)
    run.set_defaults(func=_run)

    sweep = sub.add_parser("sweep", help="grid or random search: each variant a papermill run, in parallel, nested in MLflow")
    sweep.add_argument("stage", help="04, 04_tuning or nbs/04_tuning.ipynb")
    sweep.add_argument("grid", nargs="+", metavar="KEY=V1,V2", help="values to try for one parameter (repeatable)")
    sweep.add_argument("--set", action="append", metavar="KEY=VALUE", help="fixed override for every variant")
    sweep.add_argument("--jobs", type=int, default=2, help="variants run at once (default 2)")
    sweep.add_argument("--samples", type=int, help="random search: run only this many combinations of the grid")
    sweep.add_argument("--seed", type=int, default=0, help="seed for --samples")
    sweep.add_argument("--metric", default=None, help="sort the summary by this metric, e.g. valid_accuracy")
    sweep.add_argument("--minimize", action="store_true", help="lower --metric is better")
    sweep.add_argument("--out", help="folder for the variants and summary.csv (default reports/sweeps/STAGE/TIME)")
    sweep.add_argument("--no-track", action="store_true", help="do not record MLflow runs")
    sweep.set_defaults(func=_sweep)

    embed = sub.add_parser("embed-digits", help="write scikit-learn's bundled digits as a folder-per-class PNG tree")
    embed.add_argument("out", help="folder to write, e.g. data/raw/digits")
    embed.add_argument("--per-class", type=int, default=0, help="keep only the first N images of each class")
    embed.set_defaults(func=_embed_digits)

    audit = sub.add_parser("audit", help="decode a folder or CSV manifest: quarantine, conversions, duplicates")
    audit.add_argument("path", help="image folder (one sub-folder per class) or CSV with path,label")
    audit.add_argument("--near-threshold", type=float, default=0.01, help="1 - correlation below which images are near copies")
    audit.add_argument("--min-class-items", type=int, default=5, help="classes with fewer usable items are reported")
    audit.add_argument("--workers", type=int, default=0, help="decoding processes (0: all cores)")
    audit.add_argument("--out", help="also write the per-item audit table to this CSV")
    audit.set_defaults(func=_audit)

    seal = sub.add_parser("seal", help="seal the current test split (hashes of every item, logged in the ledger)")
    seal.add_argument("--reason", default="stagebook seal", help="why, for the ledger")
    seal.set_defaults(func=_seal)
    sub.add_parser("ledger", help="print the test-set ledger and verify its hash chain").set_defaults(func=_ledger)

    sub.add_parser("stages", help="list the project's stages in order").set_defaults(func=_stages)
    sub.add_parser("lineage", help="print the current code commit, data version and model hash").set_defaults(func=_lineage)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code = args.func(args)
    except StagebookError as err:
        print(f"stagebook: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stagebook: interrupted", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
