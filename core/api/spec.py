"""A small declarative layer over Flask for the REST API.

Every endpoint is declared once with its method, path, roles, query/body models and
response model; the same declaration validates requests, checks roles and produces the
OpenAPI document, so the document cannot drift from the routes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import wraps
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from flask import Blueprint, Response, g, request
from pydantic import (
    BaseModel,
    ConfigDict,
    Tag,
    TypeAdapter,
    ValidationInfo,
    field_validator,
)
from pydantic import ValidationError as PydanticError
from pydantic_core import ErrorDetails
from werkzeug.exceptions import RequestEntityTooLarge

from core.config import get_settings
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
        # In a JSON body a true/false field takes true or false: lax mode would read
        # 0, 1, "no", "off" as one (an app's {"on_duty": 0} would have been a guess).
        # A query string's "true" is text by nature and stays read as before.
        if (value is not None and not isinstance(value, bool) and info.field_name is not None
                and info.context is JSON_BODY
                and _boolean(cls.model_fields[info.field_name].annotation)):
            raise ValueError("must be true or false")
        return value


# The validation context of a JSON body (parse_body), told from a query string's.
JSON_BODY: dict[str, str] = {"from": "json"}


def _boolean(annotation: Any) -> bool:
    """A field that takes true or false only (optional or not)."""
    if annotation is bool:
        return True
    if get_origin(annotation) in (Union, UnionType):
        return set(get_args(annotation)) - {type(None)} == {bool}
    return False


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


@dataclass(frozen=True)
class Header:
    """A request header a route reads (Idempotency-Key), as the document shows it: a
    client generated from the document can send only what it declares."""

    name: str
    description: str
    max_length: int | None = None
    required: bool = False

    def parameter(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "minLength": 1}
        if self.max_length is not None:
            schema["maxLength"] = self.max_length
        return {"name": self.name, "in": "header", "required": self.required,
                "description": self.description, "schema": schema}


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
    headers: tuple[Header, ...] = ()  # request headers it reads, for the document
    body_optional: bool = False  # no body (or {}) is the body model's defaults

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


@dataclass(frozen=True)
class _Path:
    """Where an error is, as the client wrote it: pydantic's loc less the tags it adds for
    the member of a union it tried (``("point", "int")`` for an ``int | str`` given a
    list: the request has no field "point.int"). ``union`` is how many of ``names`` lead
    to the first union whose member failed (None: no union), and ``about`` that field's
    description, if it has one."""

    names: tuple[str, ...]
    union: int | None = None
    about: str | None = None


def _field_of(err: ErrorDetails, model: type[BaseModel] | None = None) -> str | None:
    return ".".join(_path_of(err, model).names) or None


def _path_of(err: ErrorDetails, model: type[BaseModel] | None) -> _Path:
    """Walk the loc along the model's types. The model is validated as it is (parse_body,
    parse_query), so the loc has no leading request part ("body", "query"): its first
    element is a field, which may well be called body (an operator's reply)."""
    names: list[str] = []
    union: int | None = None
    about: str | None = None
    typ: Any = model
    info: Any = None  # the FieldInfo of the field last walked into
    for part in err.get("loc", ()):
        typ = _unwrap(typ)
        members = _union_members(typ)
        if members:  # this part is the tag of the member tried, no field
            if union is None:
                union, about = len(names), getattr(info, "description", None)
            typ = _member(members, part)
            continue
        names.append(str(part))
        typ, info = _child(typ, part)
    return _Path(tuple(names), union, about)


def _unwrap(typ: Any) -> Any:
    """Annotated[X, ...] is X; X | None is X (pydantic validates it as a nullable X,
    adding no tag)."""
    while True:
        if get_origin(typ) is Annotated:
            typ = get_args(typ)[0]
            continue
        if get_origin(typ) in (Union, UnionType):
            args = [a for a in get_args(typ) if a is not type(None)]
            if len(args) == 1:
                typ = args[0]
                continue
        return typ


def _union_members(typ: Any) -> tuple[Any, ...]:
    if get_origin(typ) in (Union, UnionType):
        args = tuple(a for a in get_args(typ) if a is not type(None))
        return args if len(args) > 1 else ()
    return ()


def _member(members: tuple[Any, ...], tag: Any) -> Any:
    """The member a tag names: pydantic's name of its validator ("int", "list[int]",
    "function-after[check(), int]", a model's name), a Tag, or a discriminator's value;
    None (walk on by the loc alone) when none does."""
    for m in members:
        if get_origin(m) is Annotated and any(
                isinstance(x, Tag) and x.tag == tag for x in get_args(m)[1:]):
            return m
        model = _unwrap(m)
        if isinstance(model, type) and issubclass(model, BaseModel) and any(
                get_origin(f.annotation) is Literal and tag in get_args(f.annotation)
                for f in model.model_fields.values()):
            return m
        try:
            if TypeAdapter(m).validator.title == tag:
                return m
        except Exception:  # noqa: BLE001 - a type pydantic cannot build alone: no match
            continue
    return None


def _child(typ: Any, part: Any) -> tuple[Any, Any]:
    """The type (and FieldInfo, for a model's field) at ``part`` within ``typ``."""
    if isinstance(typ, type) and issubclass(typ, BaseModel):
        for name, info in typ.model_fields.items():
            if part in (name, info.alias, info.validation_alias):
                return info.annotation, info
        return None, None
    origin, args = get_origin(typ), get_args(typ)
    if origin is dict or (isinstance(origin, type) and issubclass(origin, Mapping)):
        if part == "[key]":
            return (args[0] if args else None), None
        return (args[1] if len(args) > 1 else None), None
    if origin is tuple and args:
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0], None
        return (args[part] if isinstance(part, int) and part < len(args) else None), None
    if isinstance(origin, type) and issubclass(origin, Iterable) and args:
        return args[0], None  # list, set, frozenset, Sequence
    return None, None


def _validation_error(exc: PydanticError, model: type[BaseModel] | None = None) -> ApiError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    path = _path_of(first, model)
    names, msg = path.names, first.get("msg", "invalid value")
    if path.union is not None:
        # Every member of the union failed: name the union's field, and say each form it
        # takes ("a valid integer, or a valid string"), with what the field is for.
        names = names[: path.union]
        said: list[str] = []
        for err in errors:
            other = _path_of(err, model)
            if other.union != path.union or other.names[: path.union] != names:
                continue
            inner = ".".join(other.names[path.union:])
            text = err.get("msg", "invalid value")
            if said and text.startswith("Input should be "):
                text = text.removeprefix("Input should be ")
            text = f"{inner}: {text}" if inner else text
            if text not in said:
                said.append(text)
        msg = "; or ".join(said) + (f" ({path.about})" if path.about else "")
    fld = ".".join(names) or None
    return ApiError(422, "validation_error", f"{fld}: {msg}" if fld else msg, fld)


_NUL = "must not contain a NUL character"


def _reject_nul(data: dict[str, Any]) -> None:
    """Refuse (422, naming the field) a NUL in any string, key or value: no PostgreSQL text
    column takes one, and it would fail there as a 500. Pydantic lets it through (a lone
    surrogate in a value it refuses itself, naming the field; in a name it could say only
    that some string is not valid, so a name is checked for one here too). Iterative: a
    deeply nested body must not overflow."""
    stack: list[tuple[tuple[Any, ...], Any]] = [((), data)]
    while stack:
        loc, item = stack.pop()
        children: list[tuple[tuple[Any, ...], Any]] = []
        if isinstance(item, dict):
            for key, value in item.items():
                if "\x00" in key:
                    raise _field_error(loc, f"a field name {_NUL}")
                if not _is_text(key):  # "\ud800x": not said back (no reply or log holds it)
                    raise _field_error(loc, "a field name is not valid text (it holds a "
                                       "lone surrogate \\uD800-\\uDFFF)")
                children.append(((*loc, key), value))
        elif isinstance(item, list):
            children = [((*loc, i), value) for i, value in enumerate(item)]
        elif isinstance(item, str) and "\x00" in item:
            raise _field_error(loc, _NUL)
        stack.extend(reversed(children))  # report the first bad field in document order


def _is_text(name: str) -> bool:
    """Whether ``name`` is Unicode text: JSON's \\u escapes can make a lone surrogate."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Repeated(dict[str, Any]):
    """A JSON object that gave a name twice (json.loads keeps the last value): which one
    is meant depends on the reader, so the body is refused (as a query parameter given
    twice is, parse_query), naming the field."""

    def __init__(self, pairs: list[tuple[str, Any]], name: str):
        super().__init__(pairs)
        self.repeated = name


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            return _Repeated(pairs, name)
        seen.add(name)
    return dict(pairs)


def _reject_repeated(data: dict[str, Any]) -> None:
    """Refuse (422, naming it) the first field given twice in an object, at any depth.
    Run after _reject_nul: a name said back holds no NUL, nor a lone surrogate."""
    stack: list[tuple[tuple[Any, ...], Any]] = [((), data)]
    while stack:
        loc, item = stack.pop()
        children: list[tuple[tuple[Any, ...], Any]] = []
        if isinstance(item, _Repeated):
            where = (*loc, item.repeated)
            if not ".".join(map(str, where)).isprintable():  # a control character: not said
                raise _field_error((), "a field is given more than once; give it once")
            raise _field_error(where, "given more than once; give it once")
        if isinstance(item, dict):
            children = [((*loc, key), value) for key, value in item.items()]
        elif isinstance(item, list):
            children = [((*loc, i), value) for i, value in enumerate(item)]
        stack.extend(reversed(children))  # report the first in document order


def _field_error(loc: tuple[Any, ...], problem: str) -> ApiError:
    fld = ".".join(map(str, loc)) or None  # as pydantic's errors name fields
    return ApiError(422, "validation_error", f"{fld}: {problem}" if fld else problem, fld)


def parse_body(model: type[BaseModel]) -> BaseModel:
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    raw = request.get_data(cache=True)
    try:
        # "utf-8-sig": a byte-order mark before the JSON is let be (RFC 8259 section 8.1).
        data = json.loads(raw.decode("utf-8-sig"), object_pairs_hook=_object) if raw else None
    except (ValueError, RecursionError):
        # ValueError: bad UTF-8, bad JSON, or an integer past Python's 4300-digit limit;
        # RecursionError: arrays or objects nested deeper than the parser goes.
        raise ApiError(400, "bad_json", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "the body must be a JSON object")
    _reject_nul(data)
    _reject_repeated(data)
    try:
        return model.model_validate(data, context=JSON_BODY)
    except PydanticError as exc:
        raise _validation_error(exc, model) from None


def _nothing_sent() -> bool:
    """No body, or ``{}`` (which some clients always send, as refuse_unread_body lets
    be), whatever its media type."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        return True
    try:
        return bool(json.loads(raw.decode("utf-8-sig")) == {})
    except (ValueError, RecursionError):
        return False


def refuse_unread_body(query: type[BaseModel] | None) -> None:
    """A route that reads no body refuses one that says something: a field sent in the
    body that belongs in the query string (``expected_fee_paise`` of a cancel) would be
    ignored, and the request done as if it had not been given. Nothing, or ``{}`` (which
    some clients always send), is fine."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        return
    try:
        data = json.loads(raw.decode("utf-8-sig"))  # as parse_body reads it
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
        raise _validation_error(exc, model) from None


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
    headers: tuple[Header, ...] = (),
    body_optional: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare an API endpoint: route, auth, validation, serialisation, and its docs.
    ``body_optional``: a request with no body (or ``{}``) gets ``body()``, the model's
    defaults, so a body added to a route that read none keeps its callers working."""

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
                kwargs["body"] = body() if body_optional and _nothing_sent() else (
                    parse_body(body))
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
                                 response, status, tags, errors, raw_body, raw_limit,
                                 headers, body_optional))
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
        op["parameters"].extend(h.parameter() for h in ep.headers)
        if ep.body is not None:
            op["requestBody"] = {"required": not ep.body_optional, "content": {
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
        # Any route refuses a body it does not read (400) and a query it does not take (422),
        # and answers 413 to a body past MAX_CONTENT_LENGTH: one it reads no body from
        # reads it to see whether it says anything (refuse_unread_body).
        codes |= {400, 413, 422}
        if ep.body is not None or ep.raw_body:
            codes |= {415}
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
        # The public base, its path included: behind a proxy at https://host/rc a client
        # made from this document calls https://host/rc/api/v1/..., not the host's root.
        "servers": [{"url": get_settings().public_base_url}],
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"}}},
    }
