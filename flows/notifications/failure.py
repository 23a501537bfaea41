"""What a line that does not verify records: the exception class name and the message."""

from __future__ import annotations


class _Failure(Exception):
    """A line that does not verify: the exception class name and message to record.

    ``signed``: the signature had verified (the envelope is authentic, so its id is recorded)."""

    def __init__(self, failure: str, detail: str, *, signed: bool = False):
        super().__init__(detail)
        self.failure = failure
        self.detail = detail
        self.signed = signed
