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


# TF Serving's HTTP status for each canonical code (its REST front end's mapping).
HTTP_STATUS = {"CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
               "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
               "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
               "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400,
               "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500,
               "UNAUTHENTICATED": 401}


def status_error(code: str, message: str) -> RequestError:
    """An error with canonical status `code` (e.g. from a TensorFlow OpError) and the HTTP
    status TF Serving gives that code."""
    error = RequestError(message, HTTP_STATUS.get(code, 500))
    error.code = code
    return error
