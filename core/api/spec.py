"""A small declarative layer over Flask for the REST API.

Every endpoint is declared once with its method, path, roles, query/body models and
response model; the same declaration validates requests, checks roles and produces the
OpenAPI document, so the document cannot drift from the routes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import wraps
from types import UnionType
from typing import Any, Union, get_args, get_origin

from flask import Blueprint, Response, g, request
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationInfo, field_validator
from pydantic import ValidationError as PydanticError
from pydantic_core import ErrorDetails
from werkzeug.exceptions import RequestEntityTooLarge

from core.domain.errors import DomainError, NotFound


class ApiError(DomainError):
    """An error with an explicit HTTP status (auth, idempotency, payload problems)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(message, code=code, field=field)
        self.status = status


class Strict(BaseModel):
    """Base of request models: unknown fields are refused, not silently dropped, and a
    number is no true/false (pydantic's lax mode takes JSON true for 1: a declared value
    of 1 paise, a 1 kg payload)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None and _numeric(
                cls.model_fields[info.field_name].annotation):
            raise ValueError("must be a number, not true or false")
        return value


def _numeric(annotation: Any) -> bool:
    """A field that takes a number (int or float, optional, or beside another type such
    as ``int | str``) and not a bool itself."""
    if annotation in (int, float):
        return True
    if get_origin(annotation) in (Union, UnionType):
        args = get_args(annotation)
        return bool({int, float} & set(args)) and bool not in args
    return False


@dataclass(frozen=True)
class BodyLimit:
    """The largest binary body a route reads (the app's MAX_CONTENT_LENGTH is for the
    rest), asked for per request, and the error code for a body beyond it."""

    max_bytes: Callable[[], int]
    code: str
    what: str  # "the photo"


class RefundToRetry(BaseModel):
    """A failed refund ops may name to try again (payments.WhichRefund lists them)."""

    attempt: int
    leg: int | None  # the leg's sequence, for a reversed payout's refund
    leg_id: int | None
    amount_paise: int
    reason: str
    retry_at: datetime | None  # none: it gave up retrying by itself


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None
    offices: list[str] | None = None  # ambiguous_pincode: the post offices to choose from
    total_paise: int | None = None  # price_changed: the fare's total now
    fee_paise: int | None = None  # fee_changed: the cancellation fee now
    refund_paise: int | None = None  # fee_changed: the refund now
    refunds: list[RefundToRetry] | None = None  # which_refund: the ones to choose from


class ErrorResponse(BaseModel):
    error: ErrorBody


@dataclass
class Endpoint:
    method: str
    path: str  # Flask syntax: /bookings/<ref>
    func: Callable[..., Any]
    summary: str
    roles: tuple[str, ...] | None  # None: no sign-in needed
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    response: Any  # a pydantic model, list[...] of one, or None for 204
    status: int
    tags: tuple[str, ...]
    errors: tuple[int, ...] = field(default_factory=tuple)
    raw_body: tuple[str, ...] = ()  # media types of a binary body (photo uploads)
    raw_limit: BodyLimit | None = None

    @property
    def openapi_path(self) -> str:
        out = self.path
        while "<" in out:
            start = out.index("<")
            end = out.index(">", start)
            name = out[start + 1 : end].split(":")[-1]
            out = out[:start] + "{" + name + "}" + out[end + 1 :]
        return out

    @property
    def path_params(self) -> list[tuple[str, str]]:
        params = []
        for part in self.path.split("/"):
            if part.startswith("<"):
                conv, _, name = part[1:-1].rpartition(":")
                params.append((name, "integer" if conv == "int" else "string"))
        return params


REGISTRY: list[Endpoint] = []
MAX_ID = 2**31 - 1


def _field_of(err: ErrorDetails) -> str | None:
    loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query")]
    return ".".join(loc) or None


def _validation_error(exc: PydanticError) -> ApiError:
    first = exc.errors(include_url=False)[0]
    fld = _field_of(first)
    msg = first.get("msg", "invalid value")
    return ApiError(422, "validation_error", f"{fld}: {msg}" if fld else msg, fld)


_NUL = "must not contain a NUL character"


def _reject_nul(data: dict[str, Any]) -> None:
    """Refuse (422, naming the field) a NUL in any string, key or value: no PostgreSQL text
    column takes one, and it would fail there as a 500. Pydantic lets it through (a lone
    surrogate it refuses itself). Iterative: a deeply nested body must not overflow."""
    stack: list[tuple[tuple[Any, ...], Any]] = [((), data)]
    while stack:
        loc, item = stack.pop()
        children: list[tuple[tuple[Any, ...], Any]] = []
        if isinstance(item, dict):
            for key, value in item.items():
                if "\x00" in key:
                    raise _field_error(loc, f"a field name {_NUL}")
                children.append(((*loc, key), value))
        elif isinstance(item, list):
            children = [((*loc, i), value) for i, value in enumerate(item)]
        elif isinstance(item, str) and "\x00" in item:
            raise _field_error(loc, _NUL)
        stack.extend(reversed(children))  # report the first bad field in document order


def _field_error(loc: tuple[Any, ...], problem: str) -> ApiError:
    fld = ".".join(map(str, loc)) or None  # as pydantic's errors name fields
    return ApiError(422, "validation_error", f"{fld}: {problem}" if fld else problem, fld)


def parse_body(model: type[BaseModel]) -> BaseModel:
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    raw = request.get_data(cache=True)
    try:
        data = json.loads(raw.decode("utf-8")) if raw else None
    except (ValueError, RecursionError):
        # ValueError: bad UTF-8, bad JSON, or an integer past Python's 4300-digit limit;
        # RecursionError: arrays or objects nested deeper than the parser goes.
        raise ApiError(400, "bad_json", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "the body must be a JSON object")
    _reject_nul(data)
    try:
        return model.model_validate(data)
    except PydanticError as exc:
        raise _validation_error(exc) from None


def refuse_unread_body(query: type[BaseModel] | None) -> None:
    """A route that reads no body refuses one that says something: a field sent in the
    body that belongs in the query string (``expected_fee_paise`` of a cancel) would be
    ignored, and the request done as if it had not been given. Nothing, or ``{}`` (which
    some clients always send), is fine."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        return
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        data = raw
    if data == {}:
        return
    # Only the query's own names are said back (never the client's text as such).
    known = sorted(set(data) & set(query.model_fields)) if (
        isinstance(data, dict) and query is not None) else []
    raise ApiError(400, "unexpected_body", "this endpoint reads no body" + (
        f"; give {', '.join(known)} in the query string" if known else ""),
        known[0] if known else None)


def parse_query(model: type[BaseModel]) -> BaseModel:
    args = request.args.to_dict(flat=True)
    _reject_nul(args)  # each key and its first value; a second value is refused below
    for name in args:
        if len(request.args.getlist(name)) > 1:
            # ?dry_run=false&dry_run=true: we would read the first, a proxy the last.
            raise _field_error((name,), "given more than once; give it once")
    try:
        return model.model_validate(args)
    except PydanticError as exc:
        raise _validation_error(exc) from None


def refuse_query() -> None:
    """A route that reads no query string refuses one: ``POST /bookings?dry_run=1`` would
    book for real, where the client meant only to look (as ``dry_run`` does on a cancel).
    The first name is said back, as for a route whose query model does not know it."""
    for name in request.args:
        _reject_nul({name: ""})
        raise _field_error((name,), "this endpoint reads no query string")


def read_raw_body(limit: BodyLimit | None) -> bytes:
    """The request's binary body, up to ``limit`` (checked before reading when the size is
    declared, while reading when it is not); 413 naming the limit beyond it."""
    if limit is None:
        return request.get_data(cache=False)
    max_bytes = limit.max_bytes()
    request.max_content_length = max_bytes
    try:
        return request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise ApiError(413, limit.code, f"{limit.what} is larger than the limit of "
                       f"{max_bytes} bytes") from None


def _dump(response_model: Any, value: Any) -> Any:
    if value is None:
        return None
    return TypeAdapter(response_model).dump_python(value, mode="json")


def endpoint(
    bp: Blueprint,
    method: str,
    path: str,
    *,
    summary: str,
    roles: tuple[str, ...] | None,
    response: Any,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    status: int = 200,
    tags: tuple[str, ...] = (),
    errors: tuple[int, ...] = (),
    raw_body: tuple[str, ...] = (),
    raw_limit: BodyLimit | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare an API endpoint: route, auth, validation, serialisation, and its docs."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(func)
        def view(**path_args: Any) -> Response:
            from core.api import auth_guard

            if roles is not None:
                g.principal = auth_guard.require(roles)
            for value in path_args.values():
                # Ids are PostgreSQL integers: a bigger number names nothing (not a 500).
                if isinstance(value, int) and not 1 <= value <= MAX_ID:
                    raise NotFound("not found", code="not_found")
            kwargs = dict(path_args)
            if query is not None:
                kwargs["query"] = parse_query(query)
            else:
                refuse_query()
            if body is not None:
                kwargs["body"] = parse_body(body)
            elif not raw_body:
                refuse_unread_body(query)
            if raw_body:
                if request.mimetype not in raw_body:
                    raise ApiError(415, "unsupported_media_type",
                                   f"send the body as one of: {', '.join(raw_body)}")
                kwargs["raw"] = read_raw_body(raw_limit)
            result = func(**kwargs)
            if isinstance(result, Response):
                return result
            if status == 204:
                return Response(status=204)
            return Response(json.dumps(_dump(response, result), ensure_ascii=False),
                            status=status, mimetype="application/json")

        view_name = f"{method.lower()}_{func.__name__}"
        bp.add_url_rule(path, endpoint=view_name, view_func=view, methods=[method])
        REGISTRY.append(Endpoint(method.upper(), path, func, summary, roles, body, query,
                                 response, status, tags, errors, raw_body, raw_limit))
        return view

    return decorate


# Headers an error answer carries (core.web.errors sets them), as the document shows them.
ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"headers": {"WWW-Authenticate": {
        "description": "Bearer: send Authorization: Bearer <token>",
        "schema": {"type": "string"}}}},
    429: {"headers": {"Retry-After": {
        "description": "seconds until the limit lets you try again",
        "schema": {"type": "integer", "minimum": 1}}}},
}


def openapi_document(prefix: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every declared endpoint."""
    components: dict[str, Any] = {}

    def schema_of(model: Any) -> dict[str, Any]:
        adapter = TypeAdapter(model)
        schema = adapter.json_schema(ref_template="#/components/schemas/{model}",
                                     mode="serialization")
        for name, sub in schema.pop("$defs", {}).items():
            components[name] = sub
        return schema

    def request_schema(model: type[BaseModel]) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}",
                                         mode="validation")
        for name, sub in schema.pop("$defs", {}).items():
            components[name] = sub
        components[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    error_ref = schema_of(ErrorResponse)
    components["ErrorResponse"] = error_ref
    error_content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    paths: dict[str, Any] = {}
    for ep in REGISTRY:
        op: dict[str, Any] = {
            "operationId": f"{ep.method.lower()}_{ep.func.__name__}",
            "summary": ep.summary,
            "tags": list(ep.tags),
            "parameters": [],
            "responses": {},
        }
        for name, typ in ep.path_params:
            schema: dict[str, Any] = {"type": typ}
            if typ == "integer":
                schema.update(minimum=1, maximum=MAX_ID)
            op["parameters"].append({"name": name, "in": "path", "required": True,
                                     "schema": schema})
        if ep.query is not None:
            qschema = ep.query.model_json_schema(ref_template="#/components/schemas/{model}",
                                                 mode="validation")
            for name, sub in qschema.pop("$defs", {}).items():
                components[name] = sub  # BookingStatus, LegStatus: the filters' values
            required = set(qschema.get("required", []))
            for name, prop in qschema.get("properties", {}).items():
                op["parameters"].append({"name": name, "in": "query",
                                         "required": name in required, "schema": prop})
        if ep.body is not None:
            op["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": request_schema(ep.body)}}}
        if ep.raw_body:
            op["requestBody"] = {"required": True, "content": {
                t: {"schema": {"type": "string", "format": "binary"}} for t in ep.raw_body}}
        if ep.status == 204:
            op["responses"]["204"] = {"description": "done"}
        else:
            op["responses"][str(ep.status)] = {
                "description": "success",
                "content": {"application/json": {"schema": schema_of(ep.response)}},
            }
        codes = set(ep.errors)
        # Any route refuses a body it does not read (400) and a query it does not take (422).
        codes |= {400, 422}
        if ep.body is not None or ep.raw_body:
            codes |= {400, 413, 415}
        if ep.roles is not None:
            codes |= {401, 403}
            op["security"] = [{"bearer": []}]
        codes |= {429} if ep.path.startswith("/auth") else set()
        for code in sorted(codes):
            op["responses"][str(code)] = {"description": "error", "content": error_content,
                                          **ERROR_HEADERS.get(code, {})}
        paths.setdefault(prefix + ep.openapi_path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "RideChain API", "version": "1.0.0",
                 "description": "Book, track and carry parcels between villages."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"}}},
    }
