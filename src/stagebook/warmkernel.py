"""Warm stage kernels: each kernel is forked from a process that has already imported the heavy libraries.

A stage's kernel used to spend 2–5 s of its run importing: IPython's kernel itself (1.0 s), then, in the notebook's
first cells, scikit-learn (1.2 s), torch (1.9 s), fastai (2.3 s), pandas and matplotlib. `make run` starts seven
kernels in a row, and a sweep one per variant. A stage run now starts a *kernel server* beside it
(`python -m stagebook.warmkernel SOCKET`), which imports those libraries once, then forks one kernel per request:

- **Only third-party libraries are preloaded** (`PRELOAD`), never the toolkit or the project's package, so an edit
  to `src/` is seen at the next run, as with a cold kernel. The server is keyed (like `stagebook.trackagent`) by the
  interpreter, the toolkit's source files, the user, the working folder's `matplotlibrc` if it has one (matplotlib
  reads it at import) and the environment, less the variables that change from run to run (`VOLATILE`): anything
  that could change what an import does starts another server.
- **Each kernel is a fresh process**: forked with the parent's objects frozen (`startup.forking_safely`), it takes
  the launcher's standard streams (passed over the socket), working folder, environment and arguments, and reseeds
  `random` and NumPy's global generator from the OS as a new interpreter would. A kernel that crashes fails alone.
- **The runner still manages a process of its own.** `python -m stagebook.kernel` stays the command jupyter_client
  starts; when a server answers, that launcher hands its request over, forwards signals to the forked kernel, ends
  with its exit code, and kills it if the runner disappears. The kernel ends when its launcher does (it watches the
  socket), so a killed stage leaves no kernel behind.
- **GPUs**: none of the preloaded libraries initialises CUDA at import (torch and fastai do it lazily), so a forked
  kernel can use the GPU; a server that finds CUDA initialised after an import stops serving.
- **Nothing waits for it**: a runner starts the server in the background; until it answers, kernels start cold as
  before. It leaves once no kernel of its own runs and none was asked for in IDLE_SECONDS (a kernel's parent
  poller ends it when its parent goes). `STAGEBOOK_WARM_KERNELS=0` turns it off.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ENABLE_VAR = "STAGEBOOK_WARM_KERNELS"        # "0": every kernel starts cold
IDLE_VAR = "STAGEBOOK_WARM_KERNEL_IDLE"      # seconds without a request before the server leaves
IDLE_SECONDS = 60.0
GREETING_TIMEOUT = 5.0                       # the server answers between two imports: the longest is about 2.5 s
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
# Imported once by the server, in this order (a request that arrives meanwhile is served between two of them).
# Not matplotlib's inline backend: importing it with no kernel running would leave its IPython hooks uninstalled
# (figures then show as text); pyplot loads it in the kernel, at the first figure, as in a cold kernel.
PRELOAD = ("ipykernel.kernelapp", "ipykernel.ipkernel", "numpy", "pandas",
           "PIL.Image", "matplotlib.pyplot", "sklearn.base", "sklearn.dummy", "sklearn.linear_model",
           "sklearn.ensemble", "sklearn.neighbors", "sklearn.metrics", "torch", "fastai.vision.all")
# Variables that differ between runs and that no preloaded library reads at import: left out of the key.
# (A Ray worker adds RAY_*, SPT_NOENV and its own PYTHONBREAKPOINT: its variants share the sweep's server.)
# PYTHONPATH is one of them: the server preloads nothing from it, and each kernel puts its own on sys.path
# (`_own_python_path`), so projects that each put their `src/` there share a server. PYTEST_CURRENT_TEST is pytest's
# name for the test running (a project's own tests run stages).
VOLATILE = ("PWD", "OLDPWD", "SHLVL", "_", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "COLUMNS", "LINES", "SPT_NOENV",
            "PYTHONBREAKPOINT", "PYTHONPATH", "PYTEST_CURRENT_TEST")
VOLATILE_PREFIXES = ("STAGEBOOK_", "JPY_", "DVC_", "RAY_")
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def enabled(env) -> bool:
    return env.get(ENABLE_VAR, "1").strip().lower() not in ("0", "false", "no", "off") and os.name == "posix"


def socket_path(env, cwd: str) -> Path:
    """Where the server for this interpreter, toolkit source, user and environment listens. Of the working folder
    only a `matplotlibrc` counts (matplotlib reads it at import): projects without one share a server."""
    package = Path(__file__).resolve().parent
    sources = sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in package.glob("*.py"))
    kept = sorted((k, v) for k, v in env.items() if k not in VOLATILE and not k.startswith(VOLATILE_PREFIXES))
    rc = Path(cwd) / "matplotlibrc"
    style = hashlib.sha256(rc.read_bytes()).hexdigest() if rc.is_file() else ""
    key = hashlib.sha256(json.dumps([sys.executable, str(package), sources, style, kept]).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"stagebook-kernel-{os.getuid()}-{key}.sock"


def start_in_background(env, cwd: str) -> None:
    "Start the server for kernels run with `env` in `cwd`, unless one is there; returns at once."
    if not enabled(env):
        return
    path = socket_path(env, cwd)
    if path.exists():
        return
    try:
        subprocess.Popen([sys.executable, "-m", "stagebook.warmkernel", str(path)], env=dict(env), cwd=cwd,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    except OSError:
        pass  # kernels start cold


# --- the launcher's side (`python -m stagebook.kernel`) ------------------------------------------------------------

def launch(argv: list[str]) -> int | None:
    """Have a server fork this kernel; the kernel's exit code once it ends, or None when no server answered (the
    caller then starts the kernel itself)."""
    env = dict(os.environ)
    if not enabled(env):
        return None
    path = socket_path(env, os.getcwd())
    if not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(GREETING_TIMEOUT)
        sock.connect(str(path))
        if b"warm" not in _line(sock):
            raise OSError("no greeting")
        request = json.dumps({"argv": [sys.argv[0], *argv], "cwd": os.getcwd(), "env": env}).encode()
        socket.send_fds(sock, [len(request).to_bytes(8, "big") + request], [0, 1, 2])
        child = int(json.loads(_line(sock))["pid"])
    except (OSError, ValueError, KeyError):
        sock.close()
        return None
    sock.settimeout(None)
    for sig in SIGNALS:  # interrupts and terminations reach the kernel as they would reach a cold one
        signal.signal(sig, lambda number, frame: _kill(child, number))
    runner = os.getppid()

    def watch_runner() -> None:  # what IPython's parent poller does for a cold kernel
        while os.getppid() == runner:
            time.sleep(1.0)
        _kill(child, signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=watch_runner, daemon=True).start()
    try:
        said = _line(sock)
        return int(json.loads(said)["exit"]) if said else 1  # no word: the kernel died (a signal, a crash)
    except (OSError, ValueError, KeyError):
        return 1


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        part = sock.recv(4096)
        if not part:
            break
        data += part
    return data


# --- the server's side ---------------------------------------------------------------------------------------------

def serve(path: Path) -> None:
    "Preload, answering requests between imports; then serve until idle. One server per key (a lock file)."
    import fcntl

    guard = open(f"{path}.lock", "a")
    try:
        fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return
    from .kernel import drop_working_folder
    drop_working_folder()  # as a kernel: the working folder is not where modules come from
    _SERVER_PYTHON_PATH[:] = _python_path_entries(os.environ.get("PYTHONPATH", ""))
    os.environ.setdefault("MPLBACKEND", INLINE_BACKEND)  # as IPython's kernel sets it before anything imports pyplot
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_mask = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_mask)
    listener.listen(64)
    idle = float(os.environ.get(IDLE_VAR, IDLE_SECONDS))
    last, kernels = time.monotonic(), set()
    try:
        import warnings
        for name in PRELOAD:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    __import__(name)
            except Exception:  # noqa: BLE001 - a library that is not installed is simply not preloaded
                pass
            if _cuda_started():
                return  # a forked child cannot use CUDA once its parent has: no warm kernels on this key
            while _serve_one(listener, guard, 0.0, kernels):
                last = time.monotonic()
        ready = Path(f"{path}.ready")
        ready.write_text(str(os.getpid()))  # everything is imported (tests wait for this)
        last = time.monotonic()  # idle counts from here: a server that has just finished importing does not leave
        # It stays while a kernel it forked runs: IPython's kernel ends when its parent does (its parent poller)
        while time.monotonic() - last < idle or kernels:
            if _serve_one(listener, guard, 0.5, kernels):
                last = time.monotonic()
            _reap(kernels)
    finally:
        path.unlink(missing_ok=True)  # before the socket closes: a launcher never connects to a server that left
        Path(f"{path}.ready").unlink(missing_ok=True)
        listener.close()


def _cuda_started() -> bool:
    "Whether CUDA was initialised here (no preloaded library does that at import; this guards against one that would)."
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except Exception:  # noqa: BLE001
        return False


def _reap(kernels: set) -> None:
    try:
        while (pid := os.waitpid(-1, os.WNOHANG)[0]) > 0:
            kernels.discard(pid)
    except ChildProcessError:
        kernels.clear()


def _serve_one(listener: socket.socket, guard, wait: float, kernels: set) -> bool:
    "Fork one kernel if a launcher is waiting (within `wait` seconds); True if one was served."
    from .startup import forking_safely

    listener.settimeout(wait if wait > 0 else 0.0)
    try:
        conn, _ = listener.accept()
    except (BlockingIOError, socket.timeout, InterruptedError):
        return False
    fds = []
    try:
        conn.settimeout(GREETING_TIMEOUT)
        conn.sendall(b"warm\n")
        head, fds, _, _ = socket.recv_fds(conn, 8, 3)
        size = int.from_bytes(head, "big")
        body = b""
        while len(body) < size:
            part = conn.recv(size - len(body))
            if not part:
                raise OSError("the launcher left")
            body += part
        request = json.loads(body)
        if len(fds) != 3:
            raise OSError("no standard streams")
        with forking_safely():  # the child never collects the server's objects (see startup.forking_safely)
            pid = os.fork()
            if pid == 0:
                _become_kernel(conn, listener, guard, fds, request)  # never returns
        kernels.add(pid)
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    except (OSError, ValueError, KeyError):
        pass  # that launcher starts its kernel cold
    finally:
        for fd in fds:
            os.close(fd)
        conn.close()
    return True


def _become_kernel(conn: socket.socket, listener: socket.socket, guard, fds: list[int], request: dict) -> None:
    "In the forked child: take the launcher's streams, folder, environment and arguments, and run IPython's kernel."
    code = 1
    try:
        listener.close()
        guard.close()  # the lock stays the server's alone
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        for sig in SIGNALS + (signal.SIGCHLD,):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        _own_python_path(request["env"].get("PYTHONPATH", ""))
        sys.path_importer_cache.clear()  # relative entries (PYTHONPATH=src) were listed in the server's folder
        import importlib
        importlib.invalidate_caches()
        _reseed()
        conn.settimeout(None)

        def watch_launcher() -> None:  # the launcher gone (killed with its runner): so is this kernel
            try:
                while conn.recv(1):
                    pass
            except OSError:
                pass
            os._exit(1)

        threading.Thread(target=watch_launcher, daemon=True).start()
        from ipykernel import kernelapp

        try:
            # The class read JPY_PARENT_PID when the server imported it: give the launcher's, as a cold kernel has it
            kernelapp.IPKernelApp.launch_instance(parent_handle=int(os.environ.get("JPY_PARENT_PID") or 0))
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        def tell_launcher() -> None:  # only once exit handlers ran and files were flushed: the launcher then ends,
            try:                      # and this kernel with it
                conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
            except OSError:
                pass
        from .startup import quick_exit
        quick_exit(code, last=tell_launcher)


def _python_path_entries(value: str) -> list[str]:
    "sys.path's entries for a PYTHONPATH value, as the interpreter makes them at start-up (absolute, in order)."
    return [os.path.abspath(entry) for entry in value.split(os.pathsep) if entry]


def _own_python_path(value: str) -> None:
    """sys.path as a cold kernel started with PYTHONPATH=`value` has it: the server's PYTHONPATH entries (read at its
    start-up) out, the kernel's in, at the front (where the interpreter puts them, after the script's folder, which
    a kernel drops)."""
    for entry in _SERVER_PYTHON_PATH:
        if entry in sys.path:
            sys.path.remove(entry)
    sys.path[:0] = [entry for entry in _python_path_entries(value) if entry not in sys.path]


_SERVER_PYTHON_PATH: list[str] = []  # set by `serve` before anything else: the entries its own start-up added


def _reseed() -> None:
    "Fresh draws, as a new interpreter would have (a forked child shares its parent's generator state)."
    import random
    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
