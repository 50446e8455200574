"""gunicorn's threaded worker, answering the requests gunicorn itself refuses as JSON like every other error.

gunicorn parses requests before the app sees them; a request line over its limit (414), headers
over theirs (431), control characters, a bad chunk or Content-Length (400) are refused by
gunicorn, and it writes those answers as HTML (`gunicorn.util.write_error`). The API's contract is
`{"error": {"code", "message"}}` for every error, so this worker writes them in that shape.
"""

from __future__ import annotations

import json

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

CODES = {400: "bad_request", 403: "forbidden", 414: "uri_too_long", 417: "expectation_failed",
         431: "request_header_fields_too_large", 500: "internal_error", 501: "not_implemented"}


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """What gunicorn's `write_error` sends, as the API's JSON error."""
    message = f"expected a well-formed HTTP request, got one the server refused: {mesg or reason}"
    body = json.dumps({"error": {"code": CODES.get(status_int, "bad_request"), "message": message}}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin1")
    util.write_nonblock(sock, head + body)


class JsonErrorWorker(ThreadWorker):
    """The gthread worker, with gunicorn's own error answers in JSON."""

    def init_process(self) -> None:
        # gunicorn's worker calls util.write_error by module attribute when it refuses a request;
        # in this worker process that is the only use, so the JSON writer takes its place here.
        util.write_error = write_json_error
        super().init_process()
