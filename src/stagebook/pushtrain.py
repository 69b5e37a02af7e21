"""Train from `git push`: push a branch `train/<name>` and the pipeline runs through the last stage before the
sealed test (never the test itself), then its results come back as a commit on that branch.

Two ways in, one routine (`train`):
- a CI workflow (`.github/workflows/train.yml`) runs `stagebook train --commit` and pushes;
- a plain bare repository on a training machine gets a `post-receive` hook (`stagebook hook install BARE`). For each
  pushed `train/*` branch it starts `python -m stagebook.pushtrain BARE REF SHA` in the background: a checkout of
  that commit kept per branch under `BARE.stagebook/`, `stagebook train --commit` there, and a push of the results
  commit back to the branch (or, if the branch moved meanwhile, to `train-results/<name>`). The hook ignores the
  results commits it pushes itself.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

from .errors import StagebookError

BRANCH_PREFIX = "refs/heads/train/"
RESULTS_MARK = "[stagebook results]"  # a results commit's subject starts with this; the hook skips such pushes
RESULT_PATHS = ("metrics", "lineage", "dvc.lock")  # plus each trained stage's PDF and tables
HOOK_MARK = "# stagebook post-receive hook"


def stages_to_train(root: Path) -> list[str]:
    "Every stage before the sealed-test stage, in order (the sealed test and anything after it never run here)."
    from .project import stages_before_test

    return stages_before_test(root)


def _run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise StagebookError(f"`{' '.join(cmd)}` failed in {cwd}: {(done.stderr or done.stdout).strip()[-800:]}")
    return done


def train(root: Path, commit: bool = False) -> tuple[bool, str]:
    """Run the stages before the sealed test (`dvc repro` of those stages when the project has a dvc.yaml, else
    `stagebook run` of each in order); with `commit`, commit the results on the current branch. Returns (ok, log)."""
    root = Path(root).resolve()
    names = stages_to_train(root)
    if not names:
        raise StagebookError(f"{root / 'nbs'}: no stage before the sealed test to train.")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": os.pathsep.join(
        p for p in (str(root / "src"), os.environ.get("PYTHONPATH", "")) if p)}
    bindir = str(Path(sys.executable).parent)  # the environment this toolkit runs in: its dvc and stagebook
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    if (root / "dvc.yaml").is_file():
        steps = [["dvc", "repro", *names]]
    else:
        steps = [[sys.executable, "-m", "stagebook.cli", "run", name] for name in names]
    log, ok = [], True
    for cmd in steps:
        done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env)
        log.append(f"$ {' '.join(cmd)}\n{done.stdout}{done.stderr}")
        if done.returncode != 0:
            ok = False
            break
    text = "\n".join(log)
    if commit:
        commit_results(root, names, ok, text)
    return ok, text


def commit_results(root: Path, names: list[str], ok: bool, log: str) -> str:
    "Commit what the run left (metrics, lineage, dvc.lock, each stage's PDF and tables, a summary) on this branch."
    import json

    summary = root / "train_results.md"
    lines = [f"# Training results: {'succeeded' if ok else 'FAILED'}", "",
             f"Stages run: {', '.join(names)} (the sealed test is never run from a push).", ""]
    for name in names:
        metrics = root / "metrics" / "headline" / f"{name}.json"
        if metrics.is_file():
            values = json.loads(metrics.read_text())
            lines.append(f"- {name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in values.items()))
    if not ok:
        lines += ["", "## Log (last lines)", "", "```", *log.splitlines()[-40:], "```"]
    summary.write_text("\n".join(lines) + "\n", encoding="utf-8")
    paths = [p for p in RESULT_PATHS if (root / p).exists()] + [summary.name]
    for name in names:
        paths += [str(p.relative_to(root)) for p in (root / "reports" / f"{name}.pdf", root / "reports" / name / "tables")
                  if p.exists()]
    _run(["git", "add", "-f", "--", *paths], root)
    head = _run(["git", "rev-parse", "--short", "HEAD"], root).stdout.strip()
    _run(["git", "-c", "user.name=stagebook", "-c", "user.email=stagebook@localhost", "commit", "-q", "--allow-empty",
          "-m", f"{RESULTS_MARK} training of {head}: {'ok' if ok else 'failed'}"], root)
    return _run(["git", "rev-parse", "HEAD"], root).stdout.strip()


def run_pushed(bare: Path, ref: str, sha: str) -> str:
    "What the hook starts: check out `sha` in this branch's work folder, train, push the results back. Returns where."
    bare = Path(bare).resolve()
    branch = ref[len("refs/heads/"):]
    work_root = bare.with_name(bare.name + ".stagebook")
    work = work_root / branch.replace("/", "--")
    work_root.mkdir(parents=True, exist_ok=True)
    with open(work_root / f"{work.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one training per branch at a time; a later push waits its turn
        if not (work / ".git").is_dir():
            _run(["git", "clone", "-q", str(bare), str(work)], work_root)
        _run(["git", "fetch", "-q", "origin", f"+{ref}:refs/remotes/origin/{branch}"], work)
        _run(["git", "checkout", "-q", "-B", branch, sha], work)  # keeps untracked run outputs (MLflow store, cache)
        if (work / ".dvc").is_dir():
            _run(["dvc", "checkout", "-q"], work, check=False)
        train(work, commit=True)
        pushed = _run(["git", "push", "-q", "origin", f"HEAD:{ref}"], work, check=False)
        if pushed.returncode == 0:
            return ref
        fallback = "refs/heads/train-results/" + branch[len("train/"):]
        _run(["git", "push", "-q", "-f", "origin", f"HEAD:{fallback}"], work)
        return fallback


HOOK = """#!/bin/sh
{mark} (installed by `stagebook hook install`; reinstall to update)
# Each pushed train/* branch is trained in the background; results come back as a commit on the branch.
while read old new ref; do
  case "$ref" in
    refs/heads/train/*)
      [ "$new" = "0000000000000000000000000000000000000000" ] && continue
      case "$(git log -1 --format=%s "$new")" in "{results_mark}"*) continue ;; esac
      log="$(pwd).stagebook/$(echo "${{ref#refs/heads/}}" | tr / -).log"
      mkdir -p "$(pwd).stagebook"
      echo "stagebook: training ${{ref#refs/heads/}} at $(echo $new | cut -c1-12) on $(hostname); results come back" \\
           "as a commit on the branch (log: $log)"
      nohup env -u GIT_DIR -u GIT_QUARANTINE_PATH PATH="{bindir}:$PATH" "{python}" -m stagebook.pushtrain \\
        "$(pwd)" "$ref" "$new" >> "$log" 2>&1 < /dev/null &
      ;;
  esac
done
"""


def install_hook(bare: Path, force: bool = False) -> Path:
    "Write the post-receive hook into a bare repository, with this environment's Python baked in."
    bare = Path(bare).resolve()
    if not ((bare / "HEAD").is_file() and (bare / "objects").is_dir()):
        raise StagebookError(f"{bare}: not a bare git repository; make one with `git init --bare {bare}`.")
    hook = bare / "hooks" / "post-receive"
    if hook.is_file() and HOOK_MARK not in hook.read_text(errors="replace") and not force:
        raise StagebookError(f"{hook}: a post-receive hook that stagebook did not write is there; merge it by hand or"
                             " pass --force to replace it.")
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(HOOK.format(mark=HOOK_MARK, results_mark=RESULTS_MARK, python=sys.executable,
                                bindir=Path(sys.executable).parent), encoding="utf-8")
    hook.chmod(0o755)
    return hook


def main(argv: list[str] | None = None) -> int:
    bare, ref, sha = (argv or sys.argv[1:])[:3]
    try:
        where = run_pushed(Path(bare), ref, sha)
    except StagebookError as err:
        print(f"stagebook: training {ref} at {sha[:12]} failed: {err}", flush=True)
        return 1
    print(f"stagebook: results of {sha[:12]} pushed to {where}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
