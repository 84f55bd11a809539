"""Check response bodies against the Matrix client-server OpenAPI definitions (spec v1.19).

    from tests.openapi_schema import assert_response_matches
    assert_response_matches("GET", "/_matrix/client/v3/sync", 200, response.json())

`path` is the path as sent, still percent-encoded (`response.request.url.raw_path.decode()`),
with or without a query string; a decoded `/` is accepted only in a last parameter (a state key,
a tag). The spec is found (or fetched, pinned and checked) by `tests/matrix_spec.py`.

Schemas are validated as JSON Schema 2020-12, as OpenAPI 3.1 defines them: OpenAPI-only keywords
(`example`, `x-...`) are annotations and ignored. `format` is asserted for the Matrix formats
(`mx-user-id`, `mx-room-id`, ..., `int64`) at the level of sigils and character sets, since the
spec relies on those formats where it gives no `pattern`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urldefrag, urljoin, urlsplit
from urllib.request import url2pathname

import yaml
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.matrix_spec import SPEC_DIR_ENV, spec_dir

HTTP_METHODS = frozenset({"get", "put", "post", "delete", "head", "patch", "options"})
MAX_ERRORS_SHOWN = 5
MAX_MESSAGE_CHARS = 300  # "... is not valid under any of the given schemas" repeats the instance

_PARAM = re.compile(r"\{[^{}/]+\}")


@functools.cache
def _load_document(path: Path) -> Any:
    """One spec file, parsed once per run (YAML, or JSON for `.json`)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    return yaml.load(text, Loader=yaml.CSafeLoader)


def _path_of(uri: str) -> Path:
    parts = urlsplit(uri)
    if parts.scheme != "file":
        raise LookupError(f"only file: references are expected in the spec, got {uri!r}")
    return Path(url2pathname(parts.path))


def _retrieve(uri: str) -> Resource[Any]:
    return DRAFT202012.create_resource(_load_document(_path_of(uri)))


def _pointer_segment(key: str) -> str:
    return quote(key.replace("~", "~0").replace("/", "~1"), safe="~")


def _follow_pointer(document: Any, pointer: str, where: str) -> Any:
    node = document
    for raw in unquote(pointer).lstrip("/").split("/") if pointer else ():
        key = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list):
            node = node[int(key)]
        elif isinstance(node, Mapping) and key in node:
            node = node[key]
        else:
            raise AssertionError(f"spec reference {where} points to nothing at {key!r}")
    return node


def _format_checker() -> FormatChecker:
    """Assert Matrix `format`s loosely: sigils and alphabets, not full grammars."""
    checker = FormatChecker(formats=())

    def string_format(name: str, pattern: str) -> None:
        compiled = re.compile(pattern)

        def check(instance: object) -> bool:
            return not isinstance(instance, str) or compiled.fullmatch(instance) is not None

        checker.checks(name)(check)

    # Room IDs of room version 12 have no server part, so only the sigil is checked.
    string_format("mx-user-id", r"@[^:]*:.+")
    string_format("mx-room-alias", r"#[^:]*:.+")
    string_format("mx-room-id", r"!.+")
    string_format("mx-event-id", r"\$.+")
    string_format("mx-mxc-uri", r"mxc://[^/]+/.+")
    string_format("mx-server-name", r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")
    string_format("mx-unpadded-base64", r"[A-Za-z0-9+/]*")
    string_format("mx-urlsafe-unpadded-base64", r"[A-Za-z0-9_-]*")

    def int64(instance: object) -> bool:
        return not isinstance(instance, int) or -(2**63) <= instance < 2**63

    checker.checks("int64")(int64)
    return checker


@dataclass(frozen=True)
class Operation:
    """One method on one path of a spec file."""

    method: str  # upper case
    template: str  # with the file's base path: /_matrix/client/v3/rooms/{roomId}/messages
    file: Path
    local_path: str  # the key under `paths:` in the file: /rooms/{roomId}/messages

    @property
    def uri(self) -> str:
        """`file:///...#/paths/...` of the operation object."""
        local = _pointer_segment(self.local_path)
        return f"{self.file.as_uri()}#/paths/{local}/{self.method.lower()}"

    @property
    def responses(self) -> Mapping[str, Any]:
        operation = _load_document(self.file)["paths"][self.local_path][self.method.lower()]
        return {str(status): response for status, response in operation["responses"].items()}

    def matches(self, path: str, *, slash_in_last_param: bool) -> bool:
        return _template_regex(self.template, slash_in_last_param).fullmatch(path) is not None

    def specificity(self) -> tuple[int, ...]:
        """Sorts literal segments before parameters, position by position."""
        return tuple(1 if _PARAM.search(s) else 0 for s in self.template.split("/"))


@functools.cache
def _template_regex(template: str, slash_in_last_param: bool) -> re.Pattern[str]:
    literals = _PARAM.split(template)
    params = len(literals) - 1
    pattern = re.escape(literals[0])
    for index, literal in enumerate(literals[1:], start=1):
        last = index == params and literal == ""
        pattern += (".*" if last and slash_in_last_param else "[^/]*") + re.escape(literal)
    return re.compile(pattern)


def _base_path(document: Mapping[str, Any]) -> str:
    """The path part of the file's first `servers` URL, variables at their defaults."""
    servers = document.get("servers") or [{"url": "/"}]
    server = servers[0]
    url: str = server["url"]
    for name, variable in (server.get("variables") or {}).items():
        url = url.replace("{" + name + "}", str(variable.get("default", "")))
    return urlsplit(url).path.rstrip("/")


class SpecIndex:
    """Every client-server operation, by HTTP method and full path template."""

    def __init__(self, root: Path) -> None:
        api_dir = root / "data" / "api" / "client-server"
        if not api_dir.is_dir():
            raise FileNotFoundError(
                f"Matrix spec not found at {api_dir}; set {SPEC_DIR_ENV} to a matrix-spec"
                " checkout, or unset it to let the tests fetch the pinned release"
            )
        self.root = root
        operations: list[Operation] = []
        for file in sorted(api_dir.glob("*.yaml")):
            document = _load_document(file)
            prefix = _base_path(document)
            for local, item in (document.get("paths") or {}).items():
                for method in item:
                    if method in HTTP_METHODS:
                        operations.append(Operation(method.upper(), prefix + local, file, local))
        self.operations: tuple[Operation, ...] = tuple(operations)
        self._registry: Registry[Any] = Registry(retrieve=_retrieve)  # type: ignore[call-arg]
        self._format_checker = _format_checker()
        self._validators: dict[str, Draft202012Validator] = {}

    def find_operation(self, method: str, path: str) -> Operation:
        """The operation whose template matches the concrete path, literals beating params."""
        method = method.upper()
        path = _path_only(path)
        for slash_in_last_param in (False, True):
            found = [
                op
                for op in self.operations
                if op.method == method and op.matches(path, slash_in_last_param=slash_in_last_param)
            ]
            if found:
                return min(found, key=Operation.specificity)
        raise AssertionError(f"no operation in the client-server spec for {method} {path}")

    def response_schema_uri(self, operation: Operation, status: int) -> str:
        """`file:///...#/pointer` of the `application/json` schema for `status`."""
        name = f"{operation.method} {operation.template} ({operation.file.name})"
        for key in (str(status), f"{status // 100}XX", "default"):
            if key in operation.responses:
                break
        else:
            listed = ", ".join(operation.responses)
            raise AssertionError(f"{name} documents no {status} response (only {listed})")
        uri = f"{operation.uri}/responses/{_pointer_segment(key)}"
        response = self.resolve(uri)
        # A response may itself be a `$ref` (`#/components/responses/rateLimited`).
        while isinstance(response, Mapping) and "$ref" in response:
            uri = urljoin(uri, response["$ref"])
            response = self.resolve(uri)
        content = response.get("content") or {}
        if "application/json" not in content:
            types = ", ".join(content) or "no body"
            raise AssertionError(f"{name} {status} has no application/json schema ({types})")
        if "schema" not in content["application/json"]:
            raise AssertionError(f"{name} {status} application/json has no schema")
        return f"{uri}/content/application~1json/schema"

    def validator(self, schema_uri: str) -> Draft202012Validator:
        validator = self._validators.get(schema_uri)
        if validator is None:
            validator = Draft202012Validator(
                {"$ref": schema_uri},
                registry=self._registry,
                format_checker=self._format_checker,
            )
            self._validators[schema_uri] = validator
        return validator

    def errors(self, operation: Operation, status: int, body: object) -> list[ValidationError]:
        validator = self.validator(self.response_schema_uri(operation, status))
        return sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path)))

    def resolve(self, uri: str) -> Any:
        """The node at a `file:///...#/pointer` URI (a whole file without a fragment)."""
        file_uri, fragment = urldefrag(uri)
        return _follow_pointer(_load_document(_path_of(file_uri)), fragment, uri)


def _path_only(path: str) -> str:
    """Drop scheme, host and query; keep percent-escapes (and a raw `#` of an alias)."""
    if path.startswith(("http://", "https://")):
        path = urlsplit(path).path
    return path.split("?", 1)[0]


@functools.cache
def load_spec_index() -> SpecIndex:
    return SpecIndex(spec_dir())


def _describe(error: ValidationError) -> str:
    message = error.message
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "..."
    schema_path = "/".join(map(str, error.absolute_schema_path))
    return f"at {error.json_path}: {message} [schema: {schema_path}]"


def _describe_all(errors: list[ValidationError]) -> Iterator[str]:
    primary = best_match(errors)
    yield _describe(primary)
    others = [e for e in errors if e is not primary]
    for error in others[: MAX_ERRORS_SHOWN - 1]:
        yield _describe(error)
    if len(others) > MAX_ERRORS_SHOWN - 1:
        yield f"... and {len(others) - MAX_ERRORS_SHOWN + 1} more"


def assert_response_matches(method: str, path: str, status: int, body: object) -> None:
    """Raise AssertionError unless `body` fits the spec's schema for this response.

    Also raises if the spec has no such operation, no such status for it, or no JSON schema
    for that status, so a test never passes for want of a schema.
    """
    index = load_spec_index()
    operation = index.find_operation(method, path)
    errors = index.errors(operation, status, body)
    if errors:
        lines = "\n  ".join(_describe_all(errors))
        raise AssertionError(
            f"{method.upper()} {path} -> {status} does not match {operation.template}"
            f" ({operation.file.name}):\n  {lines}"
        )
