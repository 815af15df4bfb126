"""Read and validate multi-document YAML manifests (files, folders, stdin).

Every problem is reported with its place: ``models.yaml#2 Model/baseline-predictor: spec.replicas:
expected integer, got "three"``.  A set with any invalid document is rejected whole.  Unknown fields are
kept with a warning here; known fields Berth keeps but does not act on are named by
:func:`unacted_warnings`, which the control plane answers at apply (whether a field is acted on is the
control plane's to say, not the schema's).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from berth.errors import InvalidManifest
from berth.resources import podspec
from berth.resources.kinds import (
    ALL_KINDS,
    ANNOTATIONS,
    MAX_DOCUMENT_BYTES,
    MAX_DOCUMENTS,
    MAX_INPUT_BYTES,
    RUNTIME_COMPONENTS,
    SPEC_SCHEMAS,
    UNACTED_FIELDS,
    api_version_for,
)
from berth.resources.names import name_problem

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
_META_KNOWN = {"name", "namespace", "labels", "annotations", "generation", "resourceVersion", "uid",
               "creationTimestamp", "deletionTimestamp", "finalizers", "ownerReferences",
               "generateName", "managedFields"}
_TOP_KNOWN = {"apiVersion", "kind", "metadata", "spec", "status"}
_SECRET_TOP = {"apiVersion", "kind", "metadata", "type", "data", "stringData", "immutable"}


@dataclass
class Document:
    """One validated manifest document, normalised to a plain dict."""

    source: str  # "path#index"
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])


@dataclass
class LoadResult:
    documents: list[Document] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    counted: int = 0  # documents seen so far (valid or not), against MAX_DOCUMENTS


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n} bytes"


class _Refused(yaml.YAMLError):
    """A manifest limit hit while reading YAML; ``str()`` is the whole problem line but for the source."""

    def __init__(self, line: int, text: str) -> None:
        super().__init__(f"line {line}: {text}")


class _ManifestLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing while the text is composed, before anything is built or expanded:
    every alias (``*name``; an anchor alone is harmless and accepted), a document over MAX_DOCUMENT_BYTES
    and a stream of more than MAX_DOCUMENTS documents.  Refusing aliases outright (instead of counting
    their expansion) keeps "billion laughs" at the cost of reading up to its first alias."""

    documents = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise _Refused(event.start_mark.line + 1,
                           f"YAML aliases (*{event.anchor}) are not accepted in manifests; write the value out")
        return super().compose_node(parent, index)

    def compose_document(self) -> yaml.Node | None:
        start = self.peek_event().start_mark  # type: ignore[no-untyped-call]
        self.documents += 1
        if self.documents > MAX_DOCUMENTS:
            raise _Refused(start.line + 1, f"more than {MAX_DOCUMENTS} documents; the limit is {MAX_DOCUMENTS} "
                                           "per input (split the set)")
        node: yaml.Node | None = super().compose_document()
        end = self.peek_event().start_mark.index  # type: ignore[no-untyped-call]  # the next document's start, or the stream's end
        if end - start.index > MAX_DOCUMENT_BYTES:
            raise _Refused(start.line + 1, f"document {self.documents} is {end - start.index} characters, above "
                                           f"the limit of {_size(MAX_DOCUMENT_BYTES)} per document")
        return node


def read_yaml(text: str, source: str) -> list[Any]:
    """The documents of a YAML (or JSON) text, empty ones dropped.  Raises InvalidManifest naming the limit
    for a text over MAX_INPUT_BYTES, a document over MAX_DOCUMENT_BYTES, more than MAX_DOCUMENTS documents or
    any alias, and yaml.YAMLError for text that is not YAML.  The one YAML reader of manifests: files, stdin
    (through :func:`load_yaml`) and the control API's apply."""
    if len(text) > MAX_INPUT_BYTES:
        raise InvalidManifest([f"{source}: {len(text)} characters, above the limit of {_size(MAX_INPUT_BYTES)} "
                               "per input (split the set)"])
    loader = _ManifestLoader(text)
    raws: list[Any] = []
    try:
        while loader.check_data():  # type: ignore[no-untyped-call]
            raw = loader.get_data()
            if raw is not None:  # empty document (e.g. trailing ---)
                raws.append(raw)
    except _Refused as exc:
        raise InvalidManifest([f"{source}: {exc}"]) from None
    finally:
        loader.dispose()
    return raws


def load_yaml(text: str, source: str) -> tuple[list[Any], list[str]]:
    """:func:`read_yaml`, answering (documents, []) or ([], the problems) instead of raising."""
    try:
        return read_yaml(text, source), []
    except InvalidManifest as exc:
        return [], exc.problems
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return [], [f"{source}:{where}: invalid YAML: {problem}"]


def count_problem(count: int, source: str) -> str | None:
    """The problem line when ``count`` documents are more than one load or apply accepts, else None."""
    if count <= MAX_DOCUMENTS:
        return None
    return f"{source}: {count} documents, above the limit of {MAX_DOCUMENTS} per apply (split the set)"


def _describe(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_TYPE_WORDS = {
    "int_type": "integer", "int_parsing": "integer", "string_type": "string", "bool_type": "boolean",
    "list_type": "list", "dict_type": "object", "model_type": "object", "model_attributes_type": "object",
    "float_type": "number", "tuple_type": "list",
}


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "int") or str(part).startswith(("function-", "constrained-")):
            continue  # pydantic's union-branch markers
        else:
            out += ("." if out else "") + str(part)
    return out


def format_validation_error(exc: ValidationError, prefix: str) -> list[str]:
    """One line per field problem; union branches of the same field collapse into one line."""
    lines: dict[str, str] = {}
    for err in exc.errors():
        path = _loc(tuple(err["loc"]))
        where = f"{prefix}.{path}" if path else prefix
        kind = err["type"]
        ctx = err.get("ctx") or {}
        if kind == "missing":
            text = f"{where}: required field missing"
        elif kind in _TYPE_WORDS:
            want = _TYPE_WORDS[kind]
            if where in lines and "expected" in lines[where]:
                prev = lines[where].split("expected ", 1)[1].split(",", 1)[0]
                want = f"{prev} or {want}"
            text = f"{where}: expected {want}, got {_describe(err.get('input'))}"
        elif kind == "less_than_equal" and "le" in ctx:
            text = f"{where}: {_describe(err.get('input'))} is above the limit of {ctx['le']}"
        elif kind == "greater_than_equal" and "ge" in ctx:
            text = f"{where}: {_describe(err.get('input'))} is below the minimum of {ctx['ge']}"
        else:
            msg = str(err["msg"])
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, "):]
            text = f"{where}: {msg} (got {_describe(err.get('input'))})"
        lines[where] = text
    return list(lines.values())


def _extra_paths(model: BaseModel, prefix: str) -> list[str]:
    out: list[str] = []
    for key in (model.model_extra or {}):
        out.append(f"{prefix}.{key}")
    for name in type(model).model_fields:
        value = getattr(model, name)
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, BaseModel):
                sub = f"{prefix}.{name}" + (f"[{i}]" if isinstance(value, list) else "")
                out.extend(_extra_paths(item, sub))
    return out


def validate_document(raw: Any, source: str, *, default_namespace: str = "default",
                      warnings: list[str] | None = None, seen_unknown: set[str] | None = None
                      ) -> tuple[dict[str, Any] | None, list[str]]:
    """Validate one document.  Returns (normalised body or None, problems)."""
    warnings = warnings if warnings is not None else []
    seen_unknown = seen_unknown if seen_unknown is not None else set()
    if not isinstance(raw, dict):
        return None, [f"{source}: expected a mapping with apiVersion/kind/metadata, got {_describe(raw)}"]
    kind = raw.get("kind")
    meta = raw.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    label = f"{source} {kind}/{name}" if isinstance(kind, str) and isinstance(name, str) else source
    problems: list[str] = []
    if not isinstance(kind, str) or kind not in ALL_KINDS:
        known = ", ".join(ALL_KINDS)
        return None, [f"{label}: kind: unknown kind {_describe(kind)} (known: {known})"]
    want_api = api_version_for(kind)
    if raw.get("apiVersion") != want_api:
        problems.append(f"{label}: apiVersion: expected {want_api!r} for kind {kind}, "
                        f"got {_describe(raw.get('apiVersion'))}")
    if not isinstance(meta, dict):
        return None, problems + [f"{label}: metadata: expected object, got {_describe(meta)}"]
    problem = name_problem(name, what="metadata.name")
    if problem:
        problems.append(f"{label}: {problem}")
    namespace = meta.get("namespace", default_namespace)
    problem = name_problem(namespace, what="metadata.namespace", label=True)
    if problem:
        problems.append(f"{label}: {problem}")
    for key in ("labels", "annotations"):
        value = meta.get(key)
        if value is not None and not (isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items())):
            problems.append(f"{label}: metadata.{key}: expected a map of strings, got {_describe(value)}")
    body: dict[str, Any] = copy.deepcopy(raw)
    body.pop("status", None)  # status is owned by Berth
    body["metadata"] = {k: v for k, v in meta.items()
                        if k not in ("generation", "resourceVersion", "uid", "creationTimestamp",
                                     "deletionTimestamp", "managedFields")}
    body["metadata"]["namespace"] = namespace
    unknown: list[str] = [f"metadata.{k}" for k in meta if k not in _META_KNOWN]
    if kind == "Secret":
        unknown += [k for k in raw if k not in _SECRET_TOP]
        for key in ("data", "stringData"):
            value = raw.get(key)
            if value is not None and not (isinstance(value, dict) and all(
                    isinstance(k, str) and isinstance(v, str) for k, v in value.items())):
                problems.append(f"{label}: {key}: expected a map of strings, got an invalid value")
    else:
        unknown += [k for k in raw if k not in _TOP_KNOWN]
        spec = raw.get("spec")
        if not isinstance(spec, dict):
            problems.append(f"{label}: spec: expected object, got {_describe(spec)}")
        else:
            try:
                parsed = SPEC_SCHEMAS[kind].model_validate(spec)
            except ValidationError as exc:
                problems.extend(format_validation_error(exc, f"{label}: spec"))
            else:
                unknown += [p.replace(f"{label}: ", "") for p in _extra_paths(parsed, "spec")]
                if kind in ("Server", "ServerConfig"):
                    problems.extend(f"{label}: {p}" for p in podspec.pod_spec_problems(spec.get("podSpec")))
    for path in unknown:
        key = f"{kind}:{path}"
        if key not in seen_unknown:
            seen_unknown.add(key)
            warnings.append(f"{label}: {path}: unknown field, kept and ignored")
    return (None if problems else body), problems


def unacted_warnings(body: dict[str, Any]) -> list[str]:
    """One line for every field, annotation or env entry of a validated document that Berth keeps but does
    not act on, saying what Berth does instead (``Server ns/x: spec.podSpec.nodeSelector: not used by
    local replicas (...); kept``).  Fields Berth acts on, and unknown fields (warned about by
    :func:`validate_document`), get none."""
    kind = str(body.get("kind"))
    meta = body.get("metadata") or {}
    label = f"{kind} {meta.get('namespace')}/{meta.get('name')}"
    raw_spec = body.get("spec")
    spec: dict[str, Any] = raw_spec if isinstance(raw_spec, dict) else {}
    found: list[tuple[str, str]] = _annotations(kind, meta.get("annotations") or {})
    found += [(f"spec.{k}", why) for k, why in UNACTED_FIELDS.get(kind, {}).items() if spec.get(k) is not None]
    autoscaled = isinstance(spec.get("maxReplicas"), int) and spec["maxReplicas"] > max(1, spec.get("minReplicas") or 1)
    if kind == "Server" and spec.get("replicas") is not None and spec.get("minReplicas") is not None \
            and not autoscaled:
        found.append(("spec.minReplicas", "not acted on while spec.replicas is set and maxReplicas is not above it "
                                          "(no autoscaling: Berth runs spec.replicas; docs/autoscaling.md)"))
    if kind in ("Server", "ServerConfig"):
        found += _pod_spec(body, kind)
    if kind == "SeldonRuntime":
        found += _runtime(spec)
    return [f"{label}: {path}: {why}; kept" for path, why in found]


def _annotations(kind: str, annotations: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    read = ", ".join(f"{a} on {'/'.join(k + 's' for k in kinds)}" for a, kinds in ANNOTATIONS.items())
    for key in annotations:
        prefix = key.partition("/")[0] if "/" in key else ""
        path = f"metadata.annotations[{key}]"
        if key in ANNOTATIONS and kind not in ANNOTATIONS[key]:
            out.append((path, f"not read on a {kind} (Berth reads it on "
                              f"{'/'.join(k + 's' for k in ANNOTATIONS[key])} only)"))
        elif key not in ANNOTATIONS and prefix == "berth.io":
            out.append((path, f"not an annotation Berth knows (it reads {read})"))
        elif prefix == "seldon.io" or prefix.endswith(".seldon.io"):
            out.append((path, f"not read by Berth (the annotations it reads: {read})"))
    return out


def _pod_spec(body: dict[str, Any], kind: str) -> list[tuple[str, str]]:
    spec = body.get("spec") or {}
    if kind == "Server":
        server_type, config, field = podspec.inference_server(body, None), spec.get("serverConfig"), \
            "spec.serverConfig"
    else:
        server_type, config, field = podspec.config_inference_server(body), body["metadata"]["name"], "spec.podSpec"
    if server_type != podspec.RUNS:  # none of it is used: one line says why
        return [(field, "not run: " + podspec.unsupported_message(config, server_type))]
    return [(f"spec.podSpec.{path}", why) for path, why in podspec.unread_fields(spec.get("podSpec"))]


def _runtime(spec: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    config = spec.get("seldonConfig")
    if config not in (None, "default"):
        out.append(("spec.seldonConfig", f"{config!r} not read (Berth has one built-in configuration, the "
                                         "equivalent of Seldon's default SeldonConfig)"))
    for override in spec.get("overrides") or []:
        name = override.get("name") if isinstance(override, dict) else None
        why = RUNTIME_COMPONENTS.get(str(name), f"{name} is not a component of Seldon's default SeldonConfig; "
                                                 "a Server's replicas come from its own spec.replicas")
        out.append((f"spec.overrides[{name}]", f"not used ({why})"))
    settings = spec.get("config")
    for key in settings if isinstance(settings, dict) else {}:
        out.append((f"spec.config.{key}", "not used (Berth reads no SeldonConfig settings; its own command "
                                          "line flags configure it)"))
    return out


def parse_text(text: str, source: str, *, default_namespace: str = "default") -> LoadResult:
    """Parse and validate every document of a YAML/JSON text; raise InvalidManifest on any problem."""
    result = LoadResult()
    problems: list[str] = []
    _parse_into(text, source, default_namespace, result, problems, set())
    if problems:
        raise InvalidManifest(problems)
    return result


def _parse_into(text: str, source: str, default_namespace: str, result: LoadResult,
                problems: list[str], seen_unknown: set[str]) -> None:
    raws, errs = load_yaml(text, source)
    if errs:
        problems.extend(errs)
        return
    for index, raw in enumerate(raws, start=1):
        if isinstance(raw, dict) and raw.get("kind") == "List" and isinstance(raw.get("items"), list):
            docs = raw["items"]
        else:
            docs = [raw]
        result.counted += len(docs)
        if result.counted > MAX_DOCUMENTS:
            problems.append(f"{source}#{index}: more than {MAX_DOCUMENTS} documents in this load (List items "
                            f"count one by one); the limit is {MAX_DOCUMENTS} (split the set)")
            return
        for doc in docs:
            body, errs = validate_document(doc, f"{source}#{index}", default_namespace=default_namespace,
                                           warnings=result.warnings, seen_unknown=seen_unknown)
            problems.extend(errs)
            if body is not None:
                result.documents.append(Document(f"{source}#{index}", body))


def _read_bounded(path: Path) -> bytes | None:
    """The file's bytes, or None when it holds more than MAX_INPUT_BYTES; never reads (nor allocates) much
    more than the limit, whatever the file (``/dev/zero``)."""
    chunks: list[bytes] = []
    size = 0
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 16):
            size += len(chunk)
            if size > MAX_INPUT_BYTES:
                return None
            chunks.append(chunk)
    return b"".join(chunks)


def manifest_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in MANIFEST_SUFFIXES)
    return [path]


def load_paths(paths: list[str], *, stdin_text: str | None = None,
               default_namespace: str = "default") -> LoadResult:
    """Load files, folders (recursively, sorted) and ``-`` (stdin).  All-or-nothing."""
    result = LoadResult()
    problems: list[str] = []
    seen_unknown: set[str] = set()
    for p in paths:
        if p == "-":
            _parse_into(stdin_text or "", "<stdin>", default_namespace, result, problems, seen_unknown)
            continue
        path = Path(p)
        if not path.exists():
            problems.append(f"{p}: no such file or directory")
            continue
        files = manifest_files(path)
        if not files:
            problems.append(f"{p}: no manifest files (*.yaml, *.yml, *.json) in this folder")
        for f in files:
            try:
                data = _read_bounded(f)
                if data is None:
                    problems.append(f"{f}: more than {_size(MAX_INPUT_BYTES)}, above the limit of "
                                    f"{_size(MAX_INPUT_BYTES)} per input (split the set)")
                    continue
                text = data.decode("utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(f"{f}: cannot read: {exc}")
                continue
            _parse_into(text, str(f), default_namespace, result, problems, seen_unknown)
    seen: dict[tuple[str, str, str], str] = {}
    for doc in result.documents:
        key = (doc.kind, doc.namespace, doc.name)
        if key in seen:
            problems.append(f"{doc.source} {doc.kind}/{doc.name}: duplicate of {seen[key]} "
                            f"in namespace {doc.namespace}")
        seen[key] = doc.source
    if problems:
        raise InvalidManifest(problems)
    return result
