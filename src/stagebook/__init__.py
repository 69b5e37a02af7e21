"""stagebook: carry an ML project through numbered stage notebooks to signed, reproducible deliverables."""
__version__ = "0.1.0"

from .errors import StagebookError  # noqa: F401
