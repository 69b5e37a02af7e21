"""`stagebook run` at a terminal: one line saying which phase the stage is in and how far along it is; nothing of
the kind when its output goes to a pipe or a log."""
import os
import pty
import subprocess
import sys
from pathlib import Path

from stagebook.protocol import Staging
from stagebook.terminal import describe

from conftest import add_stage

SLOW_PHASE = ("from stagebook import stage\nimport time\nctx = stage.init(0)",
              "with stage.child_run('phase 1 warm-up', {}):\n    for k in range(1, 4):\n"
              "        stage.progress(f'step {k}/3')\n        time.sleep(0.8)\nstage.log_metrics({'done': 1})")


def test_describe_names_the_running_phases_and_the_latest_progress(tmp_path: Path):
    staging = Staging(tmp_path)
    for n, (name, status) in enumerate([("phase 0 sanity", "FINISHED"), ("search v00", "RUNNING"),
                                        ("search v01", "RUNNING")]):
        folder = staging.children / f"{n:02d}_x"
        folder.mkdir(parents=True)
        (folder / "name").write_text(name)
        (folder / "status").write_text(status)
    staging.progress.write_text("search: 1/4 variants finished")
    assert describe(staging) == "search v00, search v01: search: 1/4 variants finished"
    for folder in staging.children.iterdir():
        (folder / "status").write_text("FINISHED")
    staging.progress.write_text("")
    assert describe(staging) == "after search v01"  # between phases: the last one that ran


def _run(root: Path, tty: bool) -> str:
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [sys.executable, "-m", "stagebook.cli", "run", "01_slow", "--no-track"]
    if not tty:
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr
    main, child = pty.openpty()
    process = subprocess.Popen(cmd, cwd=root, env=env, stdout=child, stderr=child, stdin=subprocess.DEVNULL)
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        out += chunk
    assert process.wait() == 0, out.decode(errors="replace")[-2000:]
    return out.decode(errors="replace")


def test_a_terminal_sees_the_phase_and_its_progress_and_a_pipe_does_not(project: Path):
    add_stage(project, "01_slow", "seed: 0\n", "seed = 0", *SLOW_PHASE)
    shown = _run(project, tty=True)
    assert "stagebook: 01_slow [" in shown and "phase 1 warm-up: step 2/3" in shown
    assert "01_slow done" in shown
    piped = _run(project, tty=False)
    assert "\r" not in piped and "phase 1 warm-up" not in piped and "01_slow done" in piped
