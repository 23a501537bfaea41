"""One API call described as data, so the sync and async clients share every endpoint.

An :class:`Operation` says what to send and how to read a successful answer. Endpoint
modules (``combine``, ``bills``) build operations; a client sends them. Endpoint classes
receive the client's ``send`` and return whatever it returns: a value from
:class:`~wxpay.client.Client`, an awaitable from :class:`~wxpay.client.AsyncClient`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from wxpay.errors import ApiError, UnexpectedResponseError, api_error_class

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Operation(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, str] | None = None
    json: dict[str, Any] | None = None


def request_id(response: httpx.Response) -> str | None:
    return response.headers.get("Request-ID")


def json_body(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content)
    except ValueError:
        raise UnexpectedResponseError(
            response.status_code,
            f"{response.request.method} {response.request.url.path}: body is not JSON",
            body_excerpt=response.text,
            request_id=request_id(response),
        ) from None


def parse_model(model: type[M]) -> Callable[[httpx.Response], M]:
    """A parser that reads the JSON body into ``model``; a wrong shape is an UnexpectedResponseError."""

    def parse(response: httpx.Response) -> M:
        body = json_body(response)
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            raise UnexpectedResponseError(
                response.status_code,
                f"{model.__name__} response: {where}: {first['msg']}",
                body_excerpt=response.text,
                request_id=request_id(response),
            ) from None

    return parse


def parse_empty(response: httpx.Response) -> None:
    return None


def error_from_response(response: httpx.Response) -> ApiError:
    """The exception for a non-2xx answer, from its JSON envelope ``{code, message, detail}``."""
    status = response.status_code
    rid = request_id(response)
    try:
        body = json.loads(response.content)
    except ValueError:
        return UnexpectedResponseError(
            status, f"HTTP {status} with a non-JSON body", body_excerpt=response.text, request_id=rid
        )
    if not isinstance(body, dict) or not isinstance(body.get("code"), str):
        return UnexpectedResponseError(
            status, f"HTTP {status} without an error code", body_excerpt=response.text, request_id=rid
        )
    code = body["code"]
    detail = body.get("detail") if isinstance(body.get("detail"), dict) else None
    return api_error_class(status, code)(status, code, str(body.get("message", "")), detail=detail, request_id=rid)
