"""Errors that carry the status a client should see, over REST and over gRPC.

Each error names TF Serving's canonical status code (`code`) and the HTTP status TF Serving's
REST front end maps that code to (`status`), so one raise answers both front ends the same.
Setup mistakes (bad base path, port taken) are the project's `tfpipeline.errors.UserError`.
"""


class RequestError(Exception):
    """A client mistake: answered as `{"error": message}` with `status`, never a 500."""

    status = 400
    code = "INVALID_ARGUMENT"

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class NotFound(RequestError):
    status = 404
    code = "NOT_FOUND"


class TooLarge(RequestError):
    status = 413
    code = "RESOURCE_EXHAUSTED"


class FailedPrecondition(RequestError):
    """TF Serving's code for e.g. an unknown signature key, or a label on an unloaded version."""

    status = 400
    code = "FAILED_PRECONDITION"


class Unavailable(RequestError):
    """The server is overloaded (batching queue full): try again later."""

    status = 503
    code = "UNAVAILABLE"


class DeadlineExceeded(RequestError):
    status = 504
    code = "DEADLINE_EXCEEDED"


class Unimplemented(RequestError):
    status = 501
    code = "UNIMPLEMENTED"
