"""The errors trio-audio raises, each knowing how it is reported to a client.

Errors a client causes or is told about (rendered as RFC 9457 problem+json on HTTP and as an
``error`` message plus a 4xxx close on the WebSocket)::

    ServiceError                     code                    HTTP  WS close
    ├── BadRequest (ValueError)      -                       400   4400
    │   ├── MissingField             missing_field           400   4400
    │   ├── InvalidField             invalid_field           400   4400
    │   └── BadMessage               bad_message             400   4400  (WebSocket only)
    ├── Unauthorized                 unauthorized            401   4401  (WWW-Authenticate)
    ├── Forbidden                    forbidden               403   4403
    │   └── ForbiddenOrigin          forbidden_origin        403   4403  (auth off)
    ├── MisdirectedRequest           misdirected_request     421   4403  (auth off)
    ├── IdleTimeout                  idle_timeout            408   4408  (WebSocket only)
    ├── RequestTimeout               request_timeout         408   4408  (a body sent too slowly)
    ├── NotFound (LookupError)       not_found               404   4400
    ├── MethodNotAllowed             method_not_allowed      405   4400
    ├── SeqConflict                  seq_conflict            409   4400
    ├── NotExportable                not_exportable          409   4400  (a session's WAV)
    ├── RangeNotSatisfiable          range_not_satisfiable   416   4400  (Content-Range)
    ├── PayloadTooLarge              payload_too_large       413   4413
    ├── UnsupportedMediaType         unsupported_media_type  415   4415
    ├── InvalidAudio (ValueError)    invalid_audio           422   4415
    ├── RetryLater                   (retryable, with Retry-After)
    │   ├── RateLimited              rate_limited            429   4429
    │   └── Overloaded               overloaded              503   4429
    │       └── SlowReader           slow_reader             503   4429
    ├── InsufficientStorage (OSError) insufficient_storage   507   4507  (retryable, Retry-After)
    └── InternalError                internal                500   1011

Errors of the store that stop the process rather than fail one request::

    StoreError (OSError)
    ├── DataDirLocked                another process owns the data dir
    └── CorruptLog                   a damaged record before the tail (file and offset named)
"""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    """Base of every error reported to a client; subclasses fix code, status and close code."""

    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500
    close_code: ClassVar[int] = 1011
    title: ClassVar[str] = "Internal error"
    retryable: ClassVar[bool] = False

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.part: int | None = None  # which part of its job it is about, when one is

    def of_part(self, index: int) -> ServiceError:
        """This error, naming part *index* of its job (a multipart upload's file part)."""
        self.part = index
        return self

    def problem(self, instance: str | None = None) -> dict[str, object]:
        """The RFC 9457 problem document for this error."""
        body: dict[str, object] = {
            "type": f"https://trio-audio.dev/problems/{self.code}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
            "retryable": self.retryable,
        }
        if instance is not None:
            body["instance"] = instance
        return body


class RetryLater(ServiceError):
    """An error the client should retry, after ``retry_after`` seconds (``Retry-After``)."""

    retryable = True

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class BadRequest(ServiceError, ValueError):
    code = "invalid_field"
    status = 400
    close_code = 4400
    title = "Bad request"


class MissingField(BadRequest):
    code = "missing_field"
    title = "A required field is missing"


class InvalidField(BadRequest):
    code = "invalid_field"
    title = "A field has an invalid value"


class BadMessage(BadRequest):
    code = "bad_message"
    title = "A WebSocket message could not be understood"


class Unauthorized(ServiceError):
    code = "unauthorized"
    status = 401
    close_code = 4401
    title = "A valid bearer token is required"


class Forbidden(ServiceError):
    code = "forbidden"
    status = 403
    close_code = 4403
    title = "This token may not act for that user"


class ForbiddenOrigin(Forbidden):
    code = "forbidden_origin"
    title = "Pages from this origin may not use this service"


class MisdirectedRequest(ServiceError):
    code = "misdirected_request"
    status = 421
    close_code = 4403
    title = "This service does not answer for that host"


class RequestTimeout(ServiceError):
    code = "request_timeout"
    status = 408
    close_code = 4408
    title = "The request was sent too slowly"


class RateLimited(RetryLater):
    code = "rate_limited"
    status = 429
    close_code = 4429
    title = "Too many uploads from this user"


class IdleTimeout(ServiceError):
    code = "idle_timeout"
    status = 408
    close_code = 4408
    title = "The connection was idle too long"


class NotFound(ServiceError, LookupError):
    code = "not_found"
    status = 404
    close_code = 4400
    title = "Not found"


class MethodNotAllowed(ServiceError):
    code = "method_not_allowed"
    status = 405
    close_code = 4400
    title = "Method not allowed"


class SeqConflict(ServiceError):
    code = "seq_conflict"
    status = 409
    close_code = 4400
    title = "This seq is already stored with other bytes"


class NotExportable(ServiceError):
    code = "not_exportable"
    status = 409
    close_code = 4400
    title = "The session cannot be exported in this form"


class RangeNotSatisfiable(ServiceError):
    """A ``Range`` outside the resource; ``size`` goes in ``Content-Range: bytes */size``."""

    code = "range_not_satisfiable"
    status = 416
    close_code = 4400
    title = "The requested range is outside the resource"

    def __init__(self, detail: str, size: int) -> None:
        super().__init__(detail)
        self.size = size


class PayloadTooLarge(ServiceError):
    code = "payload_too_large"
    status = 413
    close_code = 4413
    title = "Payload too large"


class UnsupportedMediaType(ServiceError):
    code = "unsupported_media_type"
    status = 415
    close_code = 4415
    title = "Unsupported media type"


class InvalidAudio(ServiceError, ValueError):
    code = "invalid_audio"
    status = 422
    close_code = 4415
    title = "The audio could not be decoded"


class Overloaded(RetryLater):
    code = "overloaded"
    status = 503
    close_code = 4429
    title = "The service is overloaded"


class SlowReader(Overloaded):
    code = "slow_reader"
    title = "The client reads results too slowly"


class StoreUnavailable(Overloaded):
    """The store's cluster did not answer in time, or the node is still starting: retry
    later (503 ``unavailable``)."""

    code = "unavailable"
    title = "The store is unavailable"


class InsufficientStorage(ServiceError, OSError):
    """The disk is full: retry after ``retry_after`` seconds (``Retry-After``)."""

    code = "insufficient_storage"
    status = 507
    close_code = 4507
    title = "The store cannot take more data"
    retryable = True

    def __init__(self, detail: str, retry_after: int = 10) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class InternalError(ServiceError):
    code = "internal"
    status = 500
    close_code = 1011
    title = "Internal error"


class StoreError(OSError):
    """The store cannot start or go on; the process stops with this message."""


class DataDirLocked(StoreError):
    """Another process holds the lock on the data dir."""


class CorruptLog(StoreError):
    """A record before the tail of the log failed its checks."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        msg = f"corrupt log record in {path} at offset {offset}: {reason}"
        super().__init__(msg)
        self.path = path
        self.offset = offset
        self.reason = reason
