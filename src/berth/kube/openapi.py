"""Pydantic JSON Schema → Kubernetes structural OpenAPI v3 schema, and back to JSON Schema for checking.

A CRD's ``openAPIV3Schema`` must be *structural* (Kubernetes' apiextensions rules): every node names a
non-empty ``type`` unless it says ``x-kubernetes-int-or-string`` or ``x-kubernetes-preserve-unknown-fields``;
no ``$ref``; no ``null`` type (``nullable: true`` instead); ``additionalProperties`` never beside
``properties``.  Pydantic's schemas break each of these, so :func:`structural` rewrites them:

=================================== ==================================================================
pydantic emits                      the CRD gets
=================================== ==================================================================
``$ref`` to ``$defs``               the definition, inlined
``anyOf [X, null]``                 X with ``nullable: true``
``anyOf [string, integer]``         ``x-kubernetes-int-or-string: true`` (quantities)
``additionalProperties: true``      ``x-kubernetes-preserve-unknown-fields: true`` (Berth keeps unknown
                                    fields and warns, so the API server must not prune them)
``dict[str, Any]`` / ``Any``        an object (or anything) with unknown fields preserved
``title``, ``default``              dropped (a default would be written into every stored object)
=================================== ==================================================================

Anything else it does not know is an error at generation time, so a schema change that Kubernetes could
not express fails the tests instead of shipping a CRD the API server refuses.

:func:`json_schema` goes the other way for checking documents with a JSON Schema validator (jsonschema):
``nullable`` becomes a ``null`` type and int-or-string becomes ``[integer, string]``, as the API server
reads them.
"""

from __future__ import annotations

from typing import Any

from berth.errors import InvalidInput

PRESERVE = "x-kubernetes-preserve-unknown-fields"
INT_OR_STRING = "x-kubernetes-int-or-string"
# JSON Schema keywords that are value validations Kubernetes accepts as they are.
_KEPT = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems", "minLength",
         "maxLength", "pattern", "enum", "format", "description", "minProperties", "maxProperties")
_DROPPED = ("title", "default", "$defs", "definitions")
_JSON_TYPES = ("string", "integer", "number", "boolean", "array", "object")


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    """The structural form of a pydantic ``model_json_schema()`` (``$defs`` resolved from its root)."""
    return _node(schema, schema.get("$defs") or {}, "spec")


def _node(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    if "$ref" in node:
        name = str(node["$ref"]).rsplit("/", 1)[-1]
        if name not in defs:
            raise InvalidInput(f"{path}: $ref {node['$ref']} names no definition; cannot inline it")
        merged = {**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}
        return _node(merged, defs, path)
    if "anyOf" in node:
        return _any_of(node, defs, path)
    if "const" in node:
        node = {**{k: v for k, v in node.items() if k != "const"}, "enum": [node["const"]]}
    kind = node.get("type")
    out: dict[str, Any] = {k: node[k] for k in _KEPT if k in node}
    unknown = set(node) - set(_KEPT) - set(_DROPPED) - {"type", "properties", "required", "items",
                                                         "additionalProperties"}
    if unknown:
        raise InvalidInput(f"{path}: schema keywords {sorted(unknown)} have no structural form; "
                           "extend berth.kube.openapi or simplify the field's type")
    if kind is None:
        # Any: keep whatever the user wrote, as Berth does.
        out[PRESERVE] = True
        return out
    if kind not in _JSON_TYPES:
        raise InvalidInput(f"{path}: type {kind!r} has no structural form")
    out["type"] = kind
    if kind == "array":
        out["items"] = _node(node.get("items") or {}, defs, f"{path}[]")
    elif kind == "object":
        props = node.get("properties") or {}
        extra = node.get("additionalProperties")
        if props:
            out["properties"] = {k: _node(v, defs, f"{path}.{k}") for k, v in props.items()}
            if node.get("required"):
                out["required"] = list(node["required"])
            if extra is not None and extra is not False:
                out[PRESERVE] = True
        elif isinstance(extra, dict) and extra:
            out["additionalProperties"] = _node(extra, defs, f"{path}.*")
        else:
            out[PRESERVE] = True
    return out


def _any_of(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    options = [o for o in node["anyOf"] if o.get("type") != "null"]
    nullable = len(options) < len(node["anyOf"])
    kinds = {o.get("type") for o in options}
    if kinds == {"string", "integer"} and all(set(o) <= {"type"} for o in options):
        out: dict[str, Any] = {INT_OR_STRING: True}
    elif len(options) == 1:
        out = _node({**options[0], **{k: v for k, v in node.items() if k in ("description",)}}, defs, path)
    else:
        raise InvalidInput(f"{path}: a union of {sorted(str(k) for k in kinds)} has no structural form "
                           "(Kubernetes allows only int-or-string); narrow the field's type")
    if nullable:
        out["nullable"] = True
    return out


def json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema (draft 4 keywords) that accepts exactly what the API server's OpenAPI schema does."""
    out: dict[str, Any] = {k: v for k, v in node.items()
                           if k in _KEPT or k in ("type", "required")}
    if node.get(INT_OR_STRING):
        out["type"] = ["integer", "string"]
    if "properties" in node:
        out["properties"] = {k: json_schema(v) for k, v in node["properties"].items()}
        out["additionalProperties"] = bool(node.get(PRESERVE))
    elif isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = json_schema(node["additionalProperties"])
    if "items" in node:
        out["items"] = json_schema(node["items"])
    if node.get("nullable") and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out
