"""Loading the configuration: one YAML file plus ``ROLLBACKD_…`` environment overrides.

The file is optional; every key has a default. Environment variables override it key by key:
``ROLLBACKD_<SECTION>__<KEY>`` (``__`` descends one level, names are case-insensitive), e.g.
``ROLLBACKD_PROMETHEUS__URL``, ``ROLLBACKD_SAFETY__DRY_RUN=true``, ``ROLLBACKD_INTERVAL_S=5``;
a whole section or list can be given as JSON (``ROLLBACKD_TARGETS='[...]'``). Empty variables
are ignored, and so are ``ROLLBACKD_…`` variables that name no setting (Kubernetes injects
``ROLLBACKD_SERVICE_HOST`` and the like into pods next to a Service called ``rollbackd``).

The environment is never read here: the caller passes it in (``environ=os.environ`` at the
command-line edge). Every problem becomes one line of a :class:`ConfigError`, naming the file,
the line, the key path in the file's own terms, what was given and what is expected.
"""

from __future__ import annotations

import difflib
import enum
import json
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_core.core_schema import ErrorType
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict, SettingsError

from rollbackd.config.settings import (
    ENV_NAME_PATTERN,
    HEADER_NAME_PATTERN,
    K8S_NAME_PATTERN,
    LABEL_NAME_PATTERN,
    URL_PATTERN,
    Settings,
)

__all__ = [
    "CONFIG_ENV",
    "ENV_NESTED_DELIMITER",
    "ENV_PREFIX",
    "ConfigError",
    "Problem",
    "error_message",
    "load_settings",
    "resolve_config_path",
]

#: Prefix of the environment variables that override settings.
ENV_PREFIX = "ROLLBACKD_"
#: Separator of nested keys in environment variable names.
ENV_NESTED_DELIMITER = "__"
#: Environment variable naming the configuration file when ``--config`` is not given.
CONFIG_ENV = "ROLLBACKD_CONFIG"
#: Largest configuration file read, in bytes: ten thousand targets take about 2.5 MiB.
MAX_FILE_BYTES = 16 * 1024 * 1024
#: Deepest nesting of mappings and lists accepted (the settings themselves go five levels deep).
MAX_DEPTH = 32
#: Longest integer accepted, in characters: no setting takes a number anywhere near this long, and
#: Python refuses to convert integers of more than 4,300 digits.
MAX_INT_CHARS = 32

Loc = tuple[int | str, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the configuration.

    ``origin`` is the file name, or the environment variable(s) a value came from; ``path`` is
    the key path in the file's terms (``targets[0].slo.max_error_rate``), empty for the whole
    document; ``line`` and ``column`` are 1-based and refer to the file.
    """

    origin: str
    message: str
    path: str = ""
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = self.origin
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used. ``str()`` gives one line per problem; ``problems``
    holds them as values. Permanent: retrying does not help until the file or environment is
    fixed."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


def resolve_config_path(value: str | Path | None, *, environ: Mapping[str, str]) -> Path | None:
    """The configuration file to load: ``value`` (``--config``) if given, else ``$ROLLBACKD_CONFIG``
    if set and not empty, else ``None`` (defaults and environment only)."""
    if value is not None and str(value) != "":
        return Path(value)
    from_env = environ.get(CONFIG_ENV, "")
    return Path(from_env) if from_env else None


def load_settings(path: Path | None, *, environ: Mapping[str, str]) -> Settings:
    """Load the YAML file at ``path`` (``None``: no file), apply the ``ROLLBACKD_…`` overrides
    found in ``environ`` and validate the result.

    :param path: the configuration file; an empty file means all defaults.
    :param environ: the process environment (or a stand-in, in tests); only variables starting
        with ``ROLLBACKD_`` are looked at.
    :raises ConfigError: listing every problem found in the file and the environment.
    """
    origin = str(path) if path is not None else "configuration"
    problems: list[Problem] = []
    text = ""
    file_data: dict[str, Any] = {}
    if path is not None:
        file_data, text, problems = _read_file(path)

    env = _Environment(environ)
    env_data = env.data()
    problems.extend(env.problems)
    data = _merge(file_data, env_data)

    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        # The node tree (the line of every key) is built again only now: kept through the
        # validation of a large file, it would take more memory than the settings themselves.
        root = _parse(origin, text, _FAST_LOADER)[0] if file_data else None
        describe = _ErrorDescriber(origin=origin, root=root, data=data, file_data=file_data, env=env)
        problems.extend(describe(error) for error in exc.errors())
        raise ConfigError(sorted(problems, key=_problem_order)) from None
    if problems:
        raise ConfigError(sorted(problems, key=_problem_order))
    return settings


def _problem_order(problem: Problem) -> tuple[bool, int]:
    return (problem.line is None, problem.line or 0)


# --- the file ---------------------------------------------------------------------------------


def _read_file(path: Path) -> tuple[dict[str, Any], str, list[Problem]]:
    """Parse ``path``: its data, its text and the problems of its keys (repeated ones)."""
    origin = str(path)
    try:
        with path.open("rb") as file:
            content = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([Problem(origin, f"cannot read the configuration file: {reason}")]) from None
    if len(content) > MAX_FILE_BYTES:
        raise ConfigError([Problem(
            origin,
            f"the file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB: not a configuration file"
            " (split the targets among several daemons)",
        )])
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        utf16 = " (it looks like UTF-16)" if content[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ConfigError([Problem(
            origin, f"not UTF-8 text ({exc.reason} at byte {exc.start}){utf16}: save the file as UTF-8"
        )]) from None

    try:
        root, data, repeated = _parse(origin, text, _FAST_LOADER)
    except _NodeError as exc:  # the node tree parsed: the Python parser would say the same
        raise ConfigError([_yaml_problem(origin, exc, prefix="")]) from None
    except yaml.YAMLError as exc:
        # libyaml words its messages differently: report them as the Python parser does.
        raise ConfigError([_syntax_problem(origin, text, exc)]) from None

    if data is None:
        return {}, text, []
    if not isinstance(data, dict):
        line = root.start_mark.line + 1 if root is not None else None
        raise ConfigError([Problem(
            origin,
            f"the top level must be a mapping of settings (like 'interval_s: 10'), got {_show(data)}",
            line=line,
        )])
    return data, text, repeated


class _NodeError(yaml.constructor.ConstructorError):
    """A value of the parsed document that cannot be used, at its node: nesting too deep, an
    integer too long, a date that does not exist."""


def _construct_object(loader: yaml.constructor.SafeConstructor, node: yaml.Node, deep: bool = False) -> Any:
    """``construct_object`` that refuses integers too long to be a setting and turns the
    constructors' own errors (``2026-13-45``, ``!!int x``) into errors at the node."""
    value = node.value
    if node.tag == "tag:yaml.org,2002:int" and isinstance(value, str) and len(value) > MAX_INT_CHARS:
        raise _NodeError(
            None, None, f"the integer is {len(value)} characters long: no setting takes a number that"
            f" large (at most {MAX_INT_CHARS} characters)", node.start_mark,
        )
    try:
        return yaml.constructor.SafeConstructor.construct_object(loader, node, deep)
    except (ValueError, OverflowError, TypeError) as exc:
        raise _NodeError(None, None, f"cannot read this value: {exc}", node.start_mark) from None


def _guarded(loader_class: type[yaml.SafeLoader]) -> type[yaml.SafeLoader]:
    return type(f"_Guarded{loader_class.__name__}", (loader_class,), {"construct_object": _construct_object})


#: libyaml's loader when PyYAML was built with it: a tenth of the time and a third of the memory of
#: the Python one for a file of a thousand targets (whose leftovers the daemon would keep as RSS).
_FAST_LOADER: type[yaml.SafeLoader] = _guarded(getattr(yaml, "CSafeLoader", yaml.SafeLoader))
#: The Python loader, whose messages are the clearer.
_PY_LOADER: type[yaml.SafeLoader] = _guarded(yaml.SafeLoader)


def _parse(
    origin: str, text: str, loader_class: type[yaml.SafeLoader]
) -> tuple[yaml.Node | None, Any, list[Problem]]:
    """The node tree, the data and the repeated keys of ``text``; raises ``yaml.YAMLError``."""
    loader = loader_class(text)
    try:
        root = loader.get_single_node()
        _check_depth(root)
        # Before construction, which merges ``<<: *anchor`` keys into the mappings' nodes.
        repeated = list(_duplicate_keys(origin, root))
        data = loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()
    return root, data, repeated


def _syntax_problem(origin: str, text: str, first: yaml.YAMLError) -> Problem:
    """The problem of ``text``, which does not parse, as the Python parser reports it (``first``,
    libyaml's own words, when the Python parser cannot even get there)."""
    try:
        _parse(origin, text, _PY_LOADER)
    except yaml.MarkedYAMLError as exc:
        return _yaml_problem(origin, exc)
    except yaml.YAMLError as exc:
        return Problem(origin, f"invalid YAML: {exc}")
    except RecursionError:  # nesting that libyaml refused (deeper than 1,000 levels)
        if isinstance(first, yaml.MarkedYAMLError):
            return _yaml_problem(origin, first)
        return Problem(origin, f"invalid YAML: mappings and lists nested deeper than {MAX_DEPTH} levels")
    return Problem(origin, "invalid YAML")  # libyaml refused what the Python parser takes


def _check_depth(root: yaml.Node | None) -> None:
    """Refuse mappings and lists nested deeper than :data:`MAX_DEPTH`, before anything recursive
    (the constructor, pydantic, error reporting) walks them. Iterative; aliases are followed once."""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, int]] = [(root, 1)] if root is not None else []
    while stack:
        node, depth = stack.pop()
        if id(node) in seen or not isinstance(node, yaml.CollectionNode):
            continue
        seen.add(id(node))
        if depth > MAX_DEPTH:
            raise _NodeError(
                None, None, f"mappings and lists nested deeper than {MAX_DEPTH} levels: not a"
                " configuration file", node.start_mark,
            )
        children = node.value
        if isinstance(node, yaml.MappingNode):
            children = [item for pair in node.value for item in pair]
        stack.extend((child, depth + 1) for child in children)


def _yaml_problem(origin: str, exc: yaml.MarkedYAMLError, *, prefix: str = "invalid YAML: ") -> Problem:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "cannot parse"
    message = f"{prefix}{problem}"
    if exc.context and exc.problem and exc.context_mark is not None:
        cm = exc.context_mark
        message += f" ({exc.context} at line {cm.line + 1}, column {cm.column + 1})"
    hint = _indentation_hint(problem, None if mark is None else mark.line + 1)
    if hint is not None:
        message += f". {hint}"
    if mark is None:
        return Problem(origin, message)
    return Problem(origin, message, line=mark.line + 1, column=mark.column + 1)


def _indentation_hint(problem: str, line: int | None) -> str | None:
    """Plain words for the parser's messages about indentation, the usual YAML mistake."""
    at = f"line {line}" if line is not None else "a line"
    if "expected <block end>" in problem or "did not find expected key" in problem:
        return (
            f"Hint: {at} is indented differently from the lines above it; the keys of one mapping (and "
            "the items of one list) must start in the same column, indented with spaces"
        )
    if "mapping values are not allowed here" in problem:
        return (
            f"Hint: {at} has a ': ' where YAML expected a plain value: a value holding ': ' needs quotes "
            "(key: \"a: b\"), or the line is indented further than the key above it, which already has "
            "a value"
        )
    if "'\\t'" in problem:  # "found character '\t' that cannot start any token"
        return "Hint: YAML indents with spaces only; replace the tabs with spaces"
    return None


def _duplicate_keys(origin: str, node: yaml.Node | None) -> Iterator[Problem]:
    """YAML keeps only the last of repeated keys; a repeated key is almost always a mistake."""
    seen_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(node, "")] if node is not None else []
    while stack:
        current, path = stack.pop()
        if id(current) in seen_nodes:  # aliases share nodes
            continue
        seen_nodes.add(id(current))
        if isinstance(current, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in current.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    name = str(key.value)
                    line = key.start_mark.line + 1
                    if name in first and first[name] != line:
                        yield Problem(
                            origin,
                            f"key '{name}' is repeated (first at line {first[name]});"
                            " only the last one would count",
                            path=path,
                            line=line,
                        )
                    first.setdefault(name, line)
                    stack.append((value, f"{path}.{name}" if path else name))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend((item, f"{path}[{index}]") for index, item in enumerate(current.value))


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``, mappings merged key by key, anything else replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# --- the environment --------------------------------------------------------------------------


class _EnvShape(Settings, BaseSettings):
    """Settings as pydantic-settings sees them: only used to read the environment's shape."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        case_sensitive=False,
        env_ignore_empty=True,
    )


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping instead of ``os.environ``."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = {name.lower(): value for name, value in environ.items() if value != ""}
        super().__init__(_EnvShape)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return self._environ


class _Environment:
    """The ``ROLLBACKD_…`` overrides: their data, and which variable set which key path."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.problems: list[Problem] = []
        self.variables: dict[tuple[str, ...], str] = {}
        prefix = ENV_PREFIX.lower()
        for name, value in environ.items():
            lowered = name.lower()
            if not lowered.startswith(prefix) or value == "":
                continue
            keys = tuple(lowered[len(prefix):].split(ENV_NESTED_DELIMITER))
            if keys[0] in Settings.model_fields:
                self.variables[keys] = name
        self._environ = environ
        self._data: dict[str, Any] = {}

    def data(self) -> dict[str, Any]:
        """The overrides as nested data, like the file's; ``{}`` after problems."""
        for keys, name in self.variables.items():
            if _is_complex(_type_at(keys)):
                why = None
                try:
                    if _depth(json.loads(self._environ[name])) > MAX_DEPTH:
                        why = f"JSON nested deeper than {MAX_DEPTH} levels"
                except RecursionError:
                    why = f"JSON nested deeper than {MAX_DEPTH} levels"
                except ValueError as exc:
                    why = f"invalid JSON ({exc})"
                if why is not None:
                    self.problems.append(Problem(
                        f"environment variable {name}",
                        f"expected {_expectation(keys)} written as JSON, got {why}",
                        path=_render_path(keys, {}),
                    ))
        if self.problems:
            return self._data
        try:
            self._data = _EnvSource(self._environ)()
        except SettingsError as exc:
            self.problems.append(Problem("environment", f"{exc}: {exc.__cause__}"))
        return self._data

    def provided(self, loc: Loc) -> bool:
        """Whether the value at ``loc`` came (at least partly) from the environment."""
        return _contains(self._data, loc)

    def origin(self, loc: Loc) -> str:
        """The variable(s) behind the value at ``loc``."""
        keys = tuple(str(part) for part in loc)
        exact = [keys[:n] for n in range(len(keys), 0, -1) if keys[:n] in self.variables]
        names = (
            [self.variables[exact[0]]]
            if exact
            else sorted(name for path, name in self.variables.items() if path[: len(keys)] == keys)
        )
        if len(names) == 1:
            return f"environment variable {names[0]}"
        return f"environment variables {', '.join(names)}" if names else "environment"


def _depth(data: Any) -> int:
    """How deep lists and mappings nest in ``data`` (iteratively: it may be very deep)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, Mapping):
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        else:
            continue
        deepest = max(deepest, depth)
    return deepest


def _is_complex(annotation: Any) -> bool:
    annotation = _unwrap(annotation)
    return get_origin(annotation) in (tuple, list, dict) or (
        isinstance(annotation, type) and issubclass(annotation, BaseModel)
    )


# --- validation errors, in the file's terms ---------------------------------------------------

#: pydantic's own error types; anything else is raised by our validators with a full message.
_BUILTIN_ERRORS: frozenset[str] = frozenset(get_args(ErrorType))


@dataclass(frozen=True, slots=True)
class _ErrorDescriber:
    origin: str
    root: yaml.Node | None
    data: Mapping[str, Any]
    file_data: Mapping[str, Any]
    env: _Environment

    def __call__(self, error: ErrorDetails) -> Problem:
        tagged: Loc = tuple(error["loc"])
        kind = error["type"]
        message = _message(error, tagged)
        loc = _untagged(tagged)
        # The part of the location that exists in the input: the whole of it, except for keys
        # that are missing (reported at their parent).
        present = _present_prefix(self.data, loc)
        shown = loc[:-1] if kind == "extra_forbidden" else present
        path = _render_path(shown, self.data)
        if self.env.provided(present) and not (
            isinstance(_get(self.data, present), Mapping) and _contains(self.file_data, present)
        ):
            return Problem(self.env.origin(present), message, path=path)
        if kind == "union_tag_invalid":  # point at the line of the unknown tag itself
            discriminator = str((error.get("ctx") or {}).get("discriminator", "kind")).strip("'")
            loc = (*loc, discriminator)
        line, _ = _node_line(self.root, loc)
        return Problem(self.origin, message, path=path, line=line)


def error_message(error: ErrorDetails, loc: Loc) -> str:
    """What a validation ``error`` at ``loc`` (a key path in the file's terms, e.g.
    ``("targets", 0, "slo", "max_error_rate")``) means, worded as ``rollbackd check-config`` words
    it: ``expected a number greater than 0 and at most 1, got 'abc'``."""
    return _message(error, loc)


def _message(error: ErrorDetails, loc: Loc) -> str:
    kind = error["type"]
    if kind == "missing":
        key = loc[-1]
        field = _field_at(loc)
        what = f" ({_sentence(field.description)})" if field is not None and field.description else ""
        return f"missing required key '{key}'{what}"
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return _unknown_tag(error, loc)
    if kind in ("value_error", "assertion_error"):
        return str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind not in _BUILTIN_ERRORS:
        return str(error["msg"])
    expected = _expectation(loc)
    if expected is None:
        return f"{error['msg']}, got {_show(error['input'])}"
    return f"expected {expected}, got {_show(error['input'])}"


def _unknown_tag(error: ErrorDetails, loc: Loc) -> str:
    """A discriminated union (e.g. a target's ``router``) given no ``kind``, or an unknown one."""
    ctx = error.get("ctx") or {}
    key = str(ctx.get("discriminator", "kind")).strip("'")
    union = _unwrap(_type_at(loc))
    known = [str(get_args(member.model_fields[key].annotation)[0]) for member in get_args(union)
             if isinstance(member, type) and issubclass(member, BaseModel) and key in member.model_fields]
    choices = ", ".join(known)
    if error["type"] == "union_tag_not_found":
        return f"missing required key '{key}' (one of {choices})"
    given = str(ctx.get("tag", ""))
    close = difflib.get_close_matches(given, known, n=1, cutoff=0.6)
    hint = f" — did you mean {close[0]!r}?" if close else ""
    return f"unknown {key} {given!r}: expected one of {choices}{hint}"


def _unknown_key(loc: Loc) -> str:
    key = str(loc[-1])
    owner = _unwrap(_type_at(loc[:-1]))
    known = list(owner.model_fields) if isinstance(owner, type) and issubclass(owner, BaseModel) else []
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    if close:
        return f"unknown key '{key}' — did you mean {' or '.join(repr(c) for c in close)}?"
    if known:
        return f"unknown key '{key}' (known keys: {', '.join(known)})"
    return f"unknown key '{key}'"


def _sentence(description: str) -> str:
    text = description.strip().rstrip(".")
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text


#: Longest value quoted in a message, in characters.
_SHOWN_CHARS = 60


def _shorten(text: str) -> str:
    if len(text) <= _SHOWN_CHARS:
        return text
    return f"{text[:_SHOWN_CHARS]}… ({len(text)} characters)"


def _show(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list | tuple):
        return "a list" if value else "an empty list"
    if isinstance(value, str):
        return _shorten(repr(value))
    if isinstance(value, int) and value.bit_length() > 64:
        return "a whole number with more than 19 digits"
    return _shorten(str(value))


def _render_path(loc: Loc, data: Mapping[str, Any]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part == "[key]":
            continue
        else:
            text += f".{part}" if text else part
    if len(loc) >= 2 and loc[0] == "targets" and isinstance(loc[1], int):
        target = _get(data, loc[:2])
        name = target.get("name") if isinstance(target, Mapping) else None
        if isinstance(name, str) and name:
            text += f" ({name})" if len(loc) == 2 else f" (target {name})"
    return text


_ABSENT = object()


def _lookup(data: Any, loc: Loc) -> Any:
    """The value at ``loc`` in plain nested data, or ``_ABSENT``."""
    for part in loc:
        if isinstance(data, Mapping):
            data = data.get(part, _ABSENT)
        elif isinstance(data, list | tuple) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return _ABSENT
        if data is _ABSENT:
            return _ABSENT
    return data


def _get(data: Any, loc: Loc) -> Any:
    value = _lookup(data, loc)
    return None if value is _ABSENT else value


def _contains(data: Any, loc: Loc) -> bool:
    return _lookup(data, loc) is not _ABSENT


def _present_prefix(data: Any, loc: Loc) -> Loc:
    for n in range(len(loc), -1, -1):
        if _contains(data, loc[:n]):
            return loc[:n]
    return ()


def _node_line(root: yaml.Node | None, loc: Loc) -> tuple[int | None, bool]:
    """The 1-based line of the deepest node along ``loc`` and whether all of ``loc`` was found."""
    if root is None:
        return None, False
    node: yaml.Node = root
    line = root.start_mark.line + 1
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(node, yaml.MappingNode):
            found = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)]
            if not found:
                return line, False
            key, node = found[-1]
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line, False
    return line, True


# --- what the model expects at a location ------------------------------------------------------


def _unwrap(annotation: Any) -> Any:
    """``X | None`` → ``X``; ``Annotated[X, ...]`` → ``X``."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _metadata(annotation: Any) -> list[Any]:
    """Constraints attached to an ``Annotated`` type (possibly inside ``X | None``)."""
    found: list[Any] = []
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            args = get_args(annotation)
            for item in args[1:]:
                found.extend(item.metadata if isinstance(item, FieldInfo) else [item])
            annotation = args[0]
        elif origin in (Union, types.UnionType):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(members) != 1:
                return found
            annotation = members[0]
        else:
            return found


def _walk(loc: Loc) -> tuple[Any, list[Any], FieldInfo | None]:
    """The type at ``loc`` in :class:`Settings`, its constraints, and the field if ``loc`` ends
    at one. ``(None, [], None)`` when ``loc`` leads nowhere in the model."""
    annotation: Any = Settings
    metadata: list[Any] = []
    field: FieldInfo | None = None
    for index, part in enumerate(loc):
        current = _unwrap(annotation)
        origin = get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel) and isinstance(part, str):
            field = current.model_fields.get(part)
            if field is None:
                return None, [], None
            annotation, metadata = field.annotation, list(field.metadata)
        elif origin in (tuple, list) and isinstance(part, int):
            annotation = get_args(current)[0]
            metadata, field = _metadata(annotation), None
        elif origin is dict and part != "[key]":
            key_type, value_type = get_args(current)
            is_key = index + 1 < len(loc) and loc[index + 1] == "[key]"
            annotation = key_type if is_key else value_type
            metadata, field = _metadata(annotation), None
        elif part == "[key]":
            continue
        elif (member := _tagged_member(current, part)) is not None:
            annotation, metadata, field = member, [], field  # a discriminated union's tag: its member
        else:
            return None, [], None
    return annotation, metadata + _metadata(annotation), field


def _untagged(loc: Loc) -> Loc:
    """``loc`` without the tags pydantic puts after a discriminated union (``router.gateway-api.route``
    is written ``router.route`` in the file)."""
    kept: list[str | int] = []
    for index, part in enumerate(loc):
        if _tagged_member(_unwrap(_type_at(loc[:index])), part) is None:
            kept.append(part)
    return tuple(kept)


def _tagged_member(union: Any, tag: Any) -> type[BaseModel] | None:
    """The member of a union of models whose ``kind`` is the literal ``tag`` (pydantic puts the
    tag of a discriminated union in an error's location)."""
    if get_origin(union) not in (Union, types.UnionType) or not isinstance(tag, str):
        return None
    for member in get_args(union):
        if isinstance(member, type) and issubclass(member, BaseModel):
            kind = member.model_fields.get("kind")
            if kind is not None and get_args(kind.annotation) == (tag,):
                return member
    return None


def _type_at(loc: Loc) -> Any:
    return _walk(loc)[0]


def _field_at(loc: Loc) -> FieldInfo | None:
    return _walk(loc)[2]


_PATTERN_TEXT = {
    K8S_NAME_PATTERN: "a name of lowercase letters, digits and '-' (like a Kubernetes object name)",
    LABEL_NAME_PATTERN: "a label name (letters, digits and '_', not starting with a digit)",
    URL_PATTERN: "a URL starting with http:// or https://",
    ENV_NAME_PATTERN: "an environment variable's name (letters, digits and '_', not starting with a digit)",
    HEADER_NAME_PATTERN: "an HTTP header name (letters, digits and '-', no spaces)",
}
_PATTERN_PLURAL = {
    K8S_NAME_PATTERN: "names",
    LABEL_NAME_PATTERN: "label names",
    URL_PATTERN: "http(s) URLs",
    ENV_NAME_PATTERN: "environment variable names",
    HEADER_NAME_PATTERN: "HTTP header names",
}


def _expectation(loc: Loc) -> str | None:
    """What the model expects at ``loc``, in words: ``a number greater than 0 and less than 1``."""
    annotation, metadata, _ = _walk(loc)
    if annotation is None:
        return None
    base = _describe(_unwrap(annotation), metadata)
    seconds = bool(loc) and str(loc[-1]).endswith("_s") and base in ("a number", "a whole number")
    if seconds:
        base += " of seconds"
    elif bool(loc) and str(loc[-1]).endswith("_ms") and base == "a number":
        base += " of milliseconds"
    bounds = [_bound(item, seconds=seconds) for item in metadata]
    text = " and ".join(bound for bound in bounds if bound)
    return f"{base} {text}" if text else base


def _pattern(metadata: Sequence[Any]) -> str | None:
    for item in metadata:
        pattern = getattr(item, "pattern", None)
        if isinstance(pattern, str):
            return pattern
    return None


def _min_length(metadata: Sequence[Any]) -> int:
    return max((item.min_length for item in metadata if isinstance(item, annotated_types.MinLen)), default=0)


def _describe(annotation: Any, metadata: Sequence[Any]) -> str:
    origin = get_origin(annotation)
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "a whole number"
    if annotation is float:
        return "a number"
    if annotation is str:
        pattern = _pattern(metadata)
        if pattern is not None:
            return _PATTERN_TEXT.get(pattern, f"a string matching {pattern}")
        return "a non-empty string" if _min_length(metadata) else "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(value) for value in get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(repr(member.value) for member in annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a mapping"
    if origin in (tuple, list):
        item = get_args(annotation)[0]
        plural = _plural(_unwrap(item), _metadata(item))
        return f"a non-empty list of {plural}" if _min_length(metadata) else f"a list of {plural}"
    if origin is dict:
        return "a mapping"
    return getattr(annotation, "__name__", str(annotation))


def _plural(annotation: Any, metadata: Sequence[Any]) -> str:
    if annotation is str:
        pattern = _pattern(metadata)
        return _PATTERN_PLURAL.get(pattern, "strings") if pattern else "strings"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mappings"
    return "values"


def _number(value: Any, *, seconds: bool = False) -> str:
    """A bound as written in messages: ``0.1``, ``65535``; whole days or hours of seconds named."""
    whole = isinstance(value, float) and value.is_integer()
    text = str(int(value)) if whole else f"{value:g}" if isinstance(value, float) else str(value)
    if seconds and value >= 3600:
        for unit, size in (("day", 86400), ("hour", 3600)):
            if value % size == 0:
                count = int(value // size)
                return f"{text} ({count} {unit}{'' if count == 1 else 's'})"
    return text


def _bound(item: Any, *, seconds: bool = False) -> str | None:
    if isinstance(item, annotated_types.Gt):
        return f"greater than {_number(item.gt, seconds=seconds)}"
    if isinstance(item, annotated_types.Ge):
        return f"at least {_number(item.ge, seconds=seconds)}"
    if isinstance(item, annotated_types.Lt):
        return f"less than {_number(item.lt, seconds=seconds)}"
    if isinstance(item, annotated_types.Le):
        return f"at most {_number(item.le, seconds=seconds)}"
    return None
