"""The stage kernel: IPython's kernel, started as `ipykernel_launcher` starts it, that ends without teardown.

The runner starts each stage's kernel as `python -m stagebook.kernel -f CONNECTION_FILE` (papermill's kernel is
otherwise the same). Once the kernel has been asked to shut down and has answered, it ends with
`startup.quick_exit`, so a stage does not wait about 1.5 s for the interpreter to dismantle torch, fastai and
matplotlib after its last cell.
"""
import sys
from pathlib import Path


def drop_working_folder() -> None:
    "As ipykernel_launcher: `python -m` put the working folder first on sys.path; IPython puts it where it belongs."
    if sys.path and (sys.path[0] == "" or Path(sys.path[0]) == Path.cwd()):
        del sys.path[0]


def main() -> None:
    from stagebook import warmkernel

    code = warmkernel.launch(sys.argv[1:])
    if code is not None:
        import os
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    drop_working_folder()
    from ipykernel import kernelapp

    kernelapp.launch_new_instance()
    from stagebook.startup import quick_exit
    quick_exit(0)


if __name__ == "__main__":
    main()
