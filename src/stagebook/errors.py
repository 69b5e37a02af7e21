"""The one error class a user can cause: its message names the file and the fix, and the CLI prints it on one line."""


class StagebookError(Exception):
    "A mistake the user can fix; `str(err)` is a single line that says where and how."

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
