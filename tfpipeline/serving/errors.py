"""Errors that carry the HTTP status a client should see.

Setup mistakes (bad base path, port taken) are the project's `tfpipeline.errors.UserError`.
"""


class RequestError(Exception):
    """A client mistake: answered as `{"error": message}` with `status`, never a 500."""

    status = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class NotFound(RequestError):
    status = 404


class TooLarge(RequestError):
    status = 413

