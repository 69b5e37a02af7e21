"""`stagebook` on the command line: parse arguments, call the library, print one line per outcome."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .errors import StagebookError
from .startup import quick_exit, trim_imports


def _run(args) -> None:
    from .execute import run_stage
    result = run_stage(args.stage, args.set or [], track=not args.no_track, log_output=args.log_output,
                       variant_dir=Path(args.variant_dir) if args.variant_dir else None,
                       parent_run_id=args.parent_run, run_name=args.run_name, timeout=args.timeout)
    for line in result.notices:
        print(f"stagebook: {result.stage.name}: {line}", file=sys.stderr)
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
                        out_dir=Path(args.out) if args.out else None, backend=args.backend, address=args.address,
                        cpus_per_variant=args.cpus, gpus_per_variant=args.gpus, timeout=args.timeout,
                        fresh_workers=args.fresh_workers)
    shown = [c for c in summary.columns if c not in ("error", "run_id")]
    print(summary[shown].to_string(index=False))
    failed = summary[summary.status != "ok"]
    for row in failed.itertuples():
        print(f"stagebook: {row.variant} failed: {row.error}", file=sys.stderr)
    print(f"stagebook: {len(summary)} variants in {summary.attrs['wall_seconds']:.1f} s on {summary.attrs['engine']},"
          f" {summary.attrs['jobs']} at a time; {len(failed)} failed"
          f" ({int(failed.error.str.contains('after a retry', regex=False).sum())} lost with their worker after a retry)")
    return 0 if (summary.status == "ok").all() else 1


def _embed_digits(args) -> None:
    from .embedded import write_digits
    count = write_digits(Path(args.out), args.per_class)
    print(f"stagebook: wrote {count} digit images to {args.out}")


def _stages(args) -> None:
    from .project import find_root, stages, stages_before_test
    root = find_root()
    for name in stages_before_test(root) if args.before_test else [s.name for s in stages(root)]:
        print(name)


def _runs(args) -> None:
    from .project import find_root
    from .runlock import reap_dead
    from .tracking import recent_runs

    root = find_root()
    reap_dead(root)
    table = recent_runs(root, args.last)
    if table.empty:
        print("stagebook: no runs recorded yet; `stagebook run STAGE` or `dvc repro` records them")
        return
    print(table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}"))
    print("stagebook: * = uncommitted changes; details: make mlflow-ui")


def _exps(args) -> None:
    import shutil

    from .experiments import collect, table
    from .project import find_root
    rows = collect(find_root())
    print(table(rows, args.width or shutil.get_terminal_size((120, 24)).columns) or "stagebook: no experiments yet")


def _lineage(args) -> None:
    import json

    from dataclasses import replace

    from .lineage import compute, model_sha256
    from .project import find_root
    root = find_root()
    print(json.dumps(replace(compute(root, "n/a"), model_sha256=model_sha256(root), model_role="on disk").as_dict(),
                     indent=2))


def _audit(args) -> None:
    from .audit import audit
    from .manifest import build_manifest

    root = Path.cwd()
    items = build_manifest(Path(args.path), root)
    result = audit(items, root, args.near_threshold, workers=args.workers or None, progress=sys.stderr.isatty(),
                   cache=Path(args.cache) if args.cache else None)
    summary = result.summary(args.min_class_items)
    for key, value in summary.items():
        print(f"{key:>30}: {', '.join(value) if isinstance(value, list) else value}")
    if result.self_test is not None:
        print(f"stagebook: {result.self_test.sentence()}")
    if result.reuse:
        print(f"stagebook: {result.reuse_sentence()}")
    for row in result.items[result.items.status != "ok"].itertuples():
        print(f"  {row.path}: {row.status}")
    if args.out:
        from .iorw import atomic_write_text
        atomic_write_text(Path(args.out), result.items.to_csv(index=False))
        print(f"stagebook: audit table written to {args.out}")


def _data_use(args) -> None:
    from .datause import use_data
    from .project import find_root

    report = use_data(find_root(), args.path, image_size=args.image_size, channels=args.channels)
    print("\n".join(report.lines()))
    print("stagebook: next: `dvc repro` (or `make run`) audits, splits and seals the new data, then trains on it")


def _split(args) -> int:
    from .project import find_root
    from .seal import reset_split, resplit

    root = find_root()
    if args.reset:
        removed = reset_split(root)
        print(f"stagebook: split reset (nothing was read yet): removed {', '.join(removed) or 'nothing (no split yet)'};"
              " the next stage-01 run (`dvc repro`) splits and seals afresh")
        return 0
    if args.resplit:
        kept = resplit(root, args.by or "", args.reason or "")
        print(f"stagebook: re-split logged in the ledger: {kept} old test items stay in test; the next stage-01 run"
              " places the rest, then `stagebook seal --reason TEXT` seals the new test set")
        return 0
    import json

    from .project import data_record
    from .split import balance_shortfalls, class_balance, load_splits, shortfall_sentence
    splits = load_splits(root, usable_only=False)
    policy = data_record(root, "split_policy")
    proportions = json.loads(policy.read_text())["proportions"] if policy.is_file() else {"train": 0.7, "valid": 0.15, "test": 0.15}
    print(class_balance(splits, proportions).round(3).to_string(index=False))
    print(f"stagebook: {shortfall_sentence(balance_shortfalls(splits, proportions))}")
    return 0


def _promote(args) -> int:
    from .project import find_root
    from .promotion import promote

    decision = promote(find_root(), by=args.by or "", reason=args.reason or "", override=args.override)
    for line in decision.lines:
        print(f"stagebook: {line}")
    before = f" (champion was version {decision.champion_before})" if decision.champion_before else ""
    if decision.promoted:
        print(f"stagebook: version {decision.version} is the champion{before}")
        return 0
    print(f"stagebook: version {decision.version} is refused by the gate{before}; reports/gate/v{decision.version}"
          "_refused.pdf has the numbers", file=sys.stderr)
    return 1


def _predict(args) -> int:
    import json

    from .predictor import Predictor
    from .project import find_root

    answers = Predictor(find_root(), args.version, runtime=args.runtime, keep_inputs=args.keep_inputs).predict_paths([Path(p) for p in args.paths])
    if args.out and args.out.endswith(".json"):
        Path(args.out).write_text(json.dumps(answers, indent=1) + "\n")
    else:
        import pandas as pd
        table = pd.DataFrame([{k: v for k, v in a.items() if k != "probabilities"} for a in answers])
        if args.out:
            table.to_csv(args.out, index=False)
        else:
            shown = [c for c in ("input", "label", "confidence", "error", "model_version", "code_commit") if c in table]
            print(table[shown].assign(code_commit=lambda t: t.code_commit.str[:12]).to_string(index=False))
    refused = sum("error" in a for a in answers)
    if refused:
        print(f"stagebook: {refused} of {len(answers)} file(s) are not usable images (see the error column)", file=sys.stderr)
    return 0


def _serve(args) -> None:
    from .project import find_root
    from .serve import serve
    print(f"stagebook: serving on http://{args.host}:{args.port} (POST /predict, GET /health)", file=sys.stderr)
    serve(find_root(), args.host, args.port, args.version, args.runtime, args.keep_inputs)


def _server(args) -> int:
    import os

    from .project import find_root
    from .server import environment, server_command

    root = find_root()
    print(f"stagebook: MLflow tracking server for {root.name} on http://{args.host}:{args.port}; point sweeps and nodes"
          f" at it with STAGEBOOK_TRACKING_URI=http://<this host>:{args.port}", file=sys.stderr)
    command = server_command(root, args.host, args.port)
    os.chdir(root)
    os.execve(command[0], command, environment())


def _harvest(args) -> int:
    from .harvest import QUEUE, accept, harvest
    from .project import find_root

    root = find_root()
    if args.accept:
        count, source = accept(root)
        print(f"stagebook: {count} confirmed item(s) added to {source} (source: harvest; never the test split);"
              " `dvc repro` audits and splits them in stage 01")
        return 0
    done = harvest(root, args.min_confidence, args.limit)
    print(f"stagebook: {done.queued} prediction(s) at confidence >= {args.min_confidence} queued for review in {QUEUE}"
          f" ({done.below} below it, {done.known} already in the data or queued, {done.missing} without their image:"
          " use --keep-inputs); fill in reviewed_label and reviewer, then `stagebook harvest --accept`")
    return 0


def _train(args) -> int:
    from .project import find_root
    from .pushtrain import stages_to_train, train

    root = find_root()
    print(f"stagebook: training through {stages_to_train(root)[-1]} (never the sealed test)", file=sys.stderr)
    ok, log = train(root, commit=args.commit)
    if not ok:
        print(log[-3000:], file=sys.stderr)
    print(f"stagebook: training {'succeeded' if ok else 'FAILED'}" + ("; results committed (train_results.md)"
                                                                      if args.commit else ""), file=sys.stderr)
    return 0 if ok else 1


def _hook(args) -> int:
    from .pushtrain import install_hook

    hook = install_hook(Path(args.bare), force=args.force)
    print(f"stagebook: installed {hook}: pushing a branch train/<name> there trains it through the stage before the"
          " sealed test, and the results come back as a commit on the branch")
    return 0


def _report(args) -> int:
    from .experience import write_report
    from .project import find_root

    root = find_root()
    print(f"stagebook: {write_report(root).relative_to(root)} (the team's reports/experience.md, then the recorded facts)")
    return 0


def _card(args) -> int:
    from .modelcard import write_card
    from .predictor import resolve_version
    from .project import find_root

    root = find_root()
    version = resolve_version(root, args.version)
    print(f"stagebook: model card of version {version.version}: {write_card(root, version).relative_to(root)}"
          " (also stored with the version in the registry)")
    return 0


def _export(args) -> int:
    from .export import export_version
    from .project import find_root

    version, done = export_version(find_root(), args.version, tuple(args.runtime))
    for e in done:
        print(f"stagebook: version {version.version} as {e.runtime}: {e.path} (sha256 {e.sha256[:16]}; max |Δp| "
              f"{e.max_abs_diff:.1e} over {e.items} valid items), recorded in the registry")
    return 0


def _seal(args) -> None:
    from .data import load_splits
    from .project import find_root
    from .seal import write_seal

    root = find_root()
    seal = write_seal(root, load_splits(root, usable_only=False), reason=args.reason)
    print(f"stagebook: sealed {seal['count']} test items as {seal['list_hash'][:16]} (logged in the ledger)")


def _submit(args) -> None:
    from .project import find_root
    from .submission import submission_path, submit
    root = find_root()
    record = submit(root, args.model, by=args.by, reason=args.reason)
    if record.get("already"):
        print(f"stagebook: {args.model} (sha256 {record['model_sha256'][:16]}) is already the submitted model; nothing changed")
        return
    print(f"stagebook: submitted {args.model} (sha256 {record['model_sha256'][:16]}, from {record['stage']}: validation"
          f" {record['metric']} {record['valid']:.4f} > bar {record['bar']:.4f}), kept as {record['model']};"
          f" commit {submission_path(root).relative_to(root)}, then `dvc repro` evaluates it on the sealed test")


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


def _new(args) -> None:
    import time

    from .template import new, read_answers
    started = time.perf_counter()
    dest = new(Path(args.dir), args.title, package=args.package, example=args.example, repo_url=args.repo_url,
               source=args.template, ref=args.ref, git=not args.no_git)
    answers, _, version = read_answers(dest)
    print(f"stagebook: new project '{answers.project_title}' in {dest} (package {answers.package}, template {version},"
          f" stagebook {__version__}) in {time.perf_counter() - started:.1f} s")
    print(f"stagebook: next: cd {args.dir} && make run" + ("" if answers.example == "digits" else
          "  (first put your images in data/raw/, one sub-folder per class)"))


def _update(args) -> int:
    from .project import find_root
    from .template import update
    report = update(find_root(), ref=args.ref, source=args.template)
    for line in report.lines():
        print(line)
    print(f"stagebook: {len(report.conflicts)} file(s) to review" + (" (the template's versions are in update-review/)"
          if report.conflicts else "") + "; see `git diff`, then commit")
    return 0


def _stage_new(args) -> None:
    from .project import find_root
    from .scaffold import new_stage
    root = find_root()
    for path in new_stage(root, args.name, report=args.report):
        print(f"stagebook: wrote {path.relative_to(root)}")
    print(f"stagebook: run it with `stagebook run {args.name}` or `dvc repro {args.name}`")


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
    run.add_argument("--timeout", type=int, help="stop a cell that runs longer than this many seconds")
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
    sweep.add_argument("--backend", default="auto", choices=["auto", "ray", "local"],
                       help="auto: Ray (started here, or RAY_ADDRESS's cluster), else local processes")
    sweep.add_argument("--address", help="a Ray cluster (default: RAY_ADDRESS; none: Ray on this machine)")
    sweep.add_argument("--cpus", type=float, help="CPUs per variant (default: this machine's cores / --jobs)")
    sweep.add_argument("--gpus", type=float, help="GPUs per variant (default: 1 with several GPUs, a share of one)")
    sweep.add_argument("--timeout", type=int, help="stop a variant's cell that runs longer than this many seconds")
    sweep.add_argument("--fresh-workers", action="store_true",
                       help="a new Ray worker process per variant (max_calls=1), not only a new child process")
    sweep.set_defaults(func=_sweep)

    embed = sub.add_parser("embed-digits", help="write scikit-learn's bundled digits as a folder-per-class PNG tree")
    embed.add_argument("out", help="folder to write, e.g. data/raw/digits")
    embed.add_argument("--per-class", type=int, default=0, help="keep only the first N images of each class")
    embed.set_defaults(func=_embed_digits)

    audit = sub.add_parser("audit", help="decode a folder or CSV manifest: quarantine, conversions, duplicates")
    audit.add_argument("path", help="image folder (one sub-folder per class) or CSV with path,label")
    audit.add_argument("--near-threshold", default="auto",
                       help="'auto' (chosen by planting copies of your images) or 1 - correlation after alignment")
    audit.add_argument("--min-class-items", type=int, default=5, help="classes with fewer usable items are reported")
    audit.add_argument("--workers", type=int, default=0, help="decoding processes (0: all cores)")
    audit.add_argument("--out", help="also write the per-item audit table to this CSV")
    audit.add_argument("--cache", help="keep per-file results and pair distances in this folder: a re-run decodes only"
                                       " new or changed files (stage 01 uses data/audit_cache)")
    audit.set_defaults(func=_audit)

    data = sub.add_parser("data", help="the project's data: `stagebook data use PATH` (a folder or CSV manifest)")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    use = data_sub.add_parser("use", help="point every stage at PATH: validate, infer size and channels, rewrite the"
                                          " data config and DVC dependencies, remove the example")
    use.add_argument("path", help="image folder (one sub-folder per class) or CSV manifest with path,label columns")
    use.add_argument("--image-size", type=int, help="instead of the median side of the images")
    use.add_argument("--channels", type=int, choices=[1, 3], help="instead of 3 for colour data, 1 for grayscale")
    use.set_defaults(func=_data_use)

    split = sub.add_parser("split", help="the split's balance per class; --reset before any test read; --resplit after")
    how = split.add_mutually_exclusive_group()
    how.add_argument("--reset", action="store_true", help="remove split, seal and ledger (refused once the test was read)")
    how.add_argument("--resplit", action="store_true", help="re-place all but the old test items (logged; needs --by, --reason)")
    split.add_argument("--by", help="who decides the re-split (ledger)")
    split.add_argument("--reason", help="why (ledger)")
    split.set_defaults(func=_split)

    promote = sub.add_parser("promote", help="register stage 06's model; champion only if better and no slower (the gate)")
    promote.add_argument("--override", action="store_true", help="promote although the gate refuses (needs --by, --reason)")
    promote.add_argument("--by", help="who decides (ledger, model version tags)")
    promote.add_argument("--reason", help="why (ledger, model version tags)")
    promote.set_defaults(func=_promote)
    predict = sub.add_parser("predict", help="predict image files or folders with the champion (or --version N)")
    predict.add_argument("paths", nargs="+", help="image files or folders")
    predict.add_argument("--version", type=int, help="a registered version instead of the champion")
    predict.add_argument("--out", help="write CSV (or .json) instead of printing a table")
    predict.add_argument("--keep-inputs", action="store_true", help="keep each image under logs/inputs/ (for harvest)")
    predict.add_argument("--runtime", default="torch", choices=["torch", "torchscript", "onnx"],
                         help="serve the version's recorded export instead of the PyTorch weights (stagebook export)")
    predict.set_defaults(func=_predict)
    serve = sub.add_parser("serve", help="HTTP predictions (FastAPI + uvicorn): POST /predict, GET /health")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--version", type=int, help="a registered version instead of the champion")
    serve.add_argument("--keep-inputs", action="store_true", help="keep each image under logs/inputs/ (for harvest)")
    serve.add_argument("--runtime", default="torch", choices=["torch", "torchscript", "onnx"],
                       help="serve the version's recorded export instead of the PyTorch weights (stagebook export)")
    serve.set_defaults(func=_serve)
    server = sub.add_parser("server", help="the project's MLflow tracking server (for sweeps on several machines)")
    server.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to let other machines reach it")
    server.add_argument("--port", type=int, default=5000)
    server.set_defaults(func=_server)
    harvest = sub.add_parser("harvest", help="confident logged predictions -> a review batch; --accept adds confirmed ones")
    harvest.add_argument("--min-confidence", type=float, default=0.95)
    harvest.add_argument("--limit", type=int, help="queue at most this many (most confident first)")
    harvest.add_argument("--accept", action="store_true", help="add the reviewed rows of data/harvest.csv to the data")
    harvest.set_defaults(func=_harvest)
    train = sub.add_parser("train", help="run every stage before the sealed test (what a push to train/<name> runs)")
    train.add_argument("--commit", action="store_true", help="commit the results (metrics, PDFs, tables) on this branch")
    train.set_defaults(func=_train)
    hook = sub.add_parser("hook", help="`stagebook hook install BARE_REPO`: train pushed train/* branches there")
    hook_sub = hook.add_subparsers(dest="hook_command", required=True)
    hook_install = hook_sub.add_parser("install", help="write the post-receive hook into a bare git repository")
    hook_install.add_argument("bare", help="the bare repository (git init --bare)")
    hook_install.add_argument("--force", action="store_true", help="replace a post-receive hook stagebook did not write")
    hook_install.set_defaults(func=_hook)
    report = sub.add_parser("report", help="`stagebook report experience`: the experience report PDF")
    report.add_argument("which", choices=["experience"], help="experience: reports/experience.md plus recorded facts")
    report.set_defaults(func=_report)
    card = sub.add_parser("card", help="the model card PDF of a registered version (promote writes it too)")
    card.add_argument("--version", type=int, help="a registered version instead of the champion")
    card.set_defaults(func=_card)
    export = sub.add_parser("export", help="TorchScript and ONNX files of a registered version, parity-checked on valid")
    export.add_argument("--version", type=int, help="a registered version instead of the champion")
    export.add_argument("--runtime", nargs="+", default=["torchscript", "onnx"], choices=["torchscript", "onnx"])
    export.set_defaults(func=_export)

    seal = sub.add_parser("seal", help="seal the current test split (hashes of every item, logged in the ledger)")
    seal.add_argument("--reason", default="stagebook seal", help="why, for the ledger")
    seal.set_defaults(func=_seal)
    sub.add_parser("ledger", help="print the test-set ledger and verify its hash chain").set_defaults(func=_ledger)
    submit = sub.add_parser("submit", help="submit a model for the sealed test (stage 06 evaluates only this one)")
    submit.add_argument("--model", default="models/model.pth", help="the model file (default models/model.pth)")
    submit.add_argument("--by", required=True, help="who decides the model is ready (goes in the ledger)")
    submit.add_argument("--reason", required=True, help="why now (goes in the ledger)")
    submit.set_defaults(func=_submit)

    new = sub.add_parser("new", help="render a new project from the template (copier), with git and the toolkit pinned")
    new.add_argument("dir", help="folder for the new project (must not exist, or be empty)")
    new.add_argument("--title", default="My stagebook project", help="the project's title")
    new.add_argument("--package", help="the nbdev package the notebooks export to (default: from the title)")
    new.add_argument("--example", choices=["digits", "none"], default="digits",
                     help="keep the digits worked example (default) or start without data")
    new.add_argument("--repo-url", default="", help="the project's git URL, for the notebooks' Colab set-up cell")
    new.add_argument("--template", help="template repository path or git URL (default: $STAGEBOOK_TEMPLATE or this toolkit's source)")
    new.add_argument("--ref", help="template git ref (default: its latest tag, else HEAD with uncommitted changes)")
    new.add_argument("--no-git", action="store_true", help="do not initialise git")
    new.set_defaults(func=_new)

    update = sub.add_parser("update", help="merge a newer template version into this project (notebooks cell-wise)")
    update.add_argument("--ref", help="template git ref to update to (default: its latest tag, else HEAD)")
    update.add_argument("--template", help="template path or git URL (default: the one the project was made from)")
    update.set_defaults(func=_update)

    stage_cmd = sub.add_parser("stage", help="add a stage: `stagebook stage new 07_name`")
    stage_sub = stage_cmd.add_subparsers(dest="stage_command", required=True)
    stage_new = stage_sub.add_parser("new", help="a notebook, params file, dvc.yaml entry (and report template)")
    stage_new.add_argument("name", help="two digits and a name, e.g. 07_deployment")
    stage_new.add_argument("--report", action="store_true", help="also write reports/templates/NAME.texw (a PDF)")
    stage_new.set_defaults(func=_stage_new)

    runs = sub.add_parser("runs", help="the last runs of each stage: status, key metric, commit")
    runs.add_argument("--last", type=int, default=3, help="runs per stage (default 3)")
    runs.set_defaults(func=_runs)

    exps = sub.add_parser("exps", help="DVC experiments in one screen: headline metrics that differ, changed params")
    exps.add_argument("--width", type=int, help="characters per line (default: the terminal's)")
    exps.set_defaults(func=_exps)

    listing = sub.add_parser("stages", help="list the project's stages in order")
    listing.add_argument("--before-test", action="store_true",
                         help="only those before the sealed-test stage (`dvc repro $(stagebook stages --before-test)`)")
    listing.set_defaults(func=_stages)
    sub.add_parser("lineage", help="print the current code commit, data version and model hash").set_defaults(func=_lineage)
    return top


def main(argv: list[str] | None = None) -> int:
    trim_imports()  # seconds of optional imports no command needs
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


def console() -> None:
    "The `stagebook` command: `main`, then an end without the interpreter's teardown (1.5 s once torch is loaded)."
    quick_exit(main())


if __name__ == "__main__":
    console()
