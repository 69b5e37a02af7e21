"""stagebook: carry an ML project through numbered stage notebooks to signed, reproducible deliverables."""
__version__ = "0.2.0"  # semver; the one place the toolkit's version is set

from .errors import StagebookError  # noqa: F401
