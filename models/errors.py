"""One exception type for every mistake a user can make: the CLI prints it as one line and
exits non-zero, the service turns it into a 4xx JSON error."""


class NanoinspectError(Exception):
    """A user-facing error with a short machine-readable code."""

    code = "invalid_input"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class DataError(NanoinspectError):
    code = "bad_data"


class ArtifactError(NanoinspectError):
    code = "bad_model"


class ImageError(NanoinspectError):
    code = "bad_image"
