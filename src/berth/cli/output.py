"""Machine output (`-o json|yaml|name|jsonpath=...|custom-columns=...`), written straight to stdout.

Nothing here goes through rich: no wrapping at any width, no markup, no colour, so what a script reads is
exactly the document.  The shapes are kubectl's (docs/cli.md is the contract):

* ``json`` / ``yaml``: the object when one was named, else a ``List`` (``{"apiVersion": "v1", "kind": "List",
  "items": [...], "metadata": {"resourceVersion": "N"}}``) however many items it holds (none or one included).
* ``name``: ``model.mlops.seldon.io/iris`` (``secret/NAME`` for Secrets), one a line.
* ``jsonpath=TEMPLATE``: kubectl's template: text outside ``{}`` printed as it is, ``{.a.b}`` (the values of
  the expression, separated by spaces; maps and lists as compact JSON), ``{range EXPR}...{end}``, string
  literals such as ``{"\\n"}``; no newline is added.  The expressions are evaluated by jsonpath-ng.
* ``custom-columns=HEADER:EXPR[,HEADER:EXPR...]``: a header row, then one row per item, ``<none>`` where an
  expression finds nothing, columns laid out as kubectl's tabwriter does.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import yaml
from jsonpath_ng.ext.parser import parse as _jsonpath_parse

from berth.errors import InvalidInput

# What each command accepts (in this order in its error message).
LISTING = ("wide", "json", "yaml", "name", "jsonpath", "custom-columns")  # get
OBJECT = ("json", "yaml", "name", "jsonpath", "custom-columns")  # describe -o
DOCUMENT = ("json", "yaml", "jsonpath")  # answers that are not resources: infer, doctor, plan
APPLY = ("json", "yaml", "name")

_SHOWN = {"jsonpath": "jsonpath=TEMPLATE", "custom-columns": "custom-columns=HEADER:EXPR[,...]"}
_GROUP = "mlops.seldon.io"
_CORE_KINDS = ("Secret",)
_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")


def accepted_text(accepted: tuple[str, ...]) -> str:
    return ", ".join(_SHOWN.get(a, a) for a in accepted)


def write(text: str) -> None:
    """Write ``text`` to stdout as it is (flushed: a pipe sees each line of a watch at once)."""
    try:
        sys.stdout.write(text)
    except UnicodeEncodeError:  # a stdout that cannot encode it: escape, never fail on a status message
        enc = sys.stdout.encoding or "ascii"
        sys.stdout.write(text.encode(enc, "backslashreplace").decode(enc))
    sys.stdout.flush()


def dumps(doc: Any, fmt: str, *, compact: bool = False) -> str:
    """The text of ``doc`` as JSON (2-space indent, or one line when ``compact``) or YAML, ending in a newline."""
    if fmt == "json":
        if compact:
            return json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n"
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    return str(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True,
                              width=float("inf")))


def as_list(items: list[dict[str, Any]], revision: int | str | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "items": items,
            "metadata": {"resourceVersion": "" if revision is None else str(revision)}}


def resource_name(kind: str, name: str, api_version: str | None = None) -> str:
    """As kubectl names a resource: ``model.mlops.seldon.io/iris`` (custom resources), ``secret/x`` (core)."""
    group = ("" if kind in _CORE_KINDS else _GROUP) if api_version is None else api_version.rpartition("/")[0]
    return f"{kind.lower()}.{group}/{name}" if group else f"{kind.lower()}/{name}"


def name_of(doc: dict[str, Any]) -> str:
    return resource_name(doc.get("kind", ""), doc["metadata"]["name"], doc.get("apiVersion"))


# --- JSONPath templates (kubectl's template syntax; the expressions are jsonpath-ng's) -------------------


@dataclass(frozen=True)
class _Expr:
    text: str  # as the user wrote it (for messages)
    path: Any  # a compiled jsonpath-ng expression
    rooted: bool  # `$...`: from the whole document; else from the current element (inside a range)

    def find(self, root: Any, here: Any) -> list[Any]:
        try:
            return [m.value for m in self.path.find(root if self.rooted else here)]
        except Exception as exc:  # a filter comparing what cannot be compared, ...
            raise InvalidInput(f"jsonpath {{{self.text}}}: cannot evaluate: {exc}") from exc


@dataclass
class _Range:
    expr: _Expr
    body: list[Any] = field(default_factory=list)


def _scan(text: str, i: int, brace: bool) -> int:
    """Index of the closer of the `[` at ``i`` (``brace`` False) or of the `{` before ``i`` (``brace`` True),
    quoted strings and nested brackets respected; -1 when there is none."""
    depth, quote = 0, ""
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c in "[(":
            depth += 1
        elif c in "])":
            depth -= 1
            if depth == 0 and not brace:
                return i
        elif c == "}" and brace and depth <= 0:
            return i
        i += 1
    return -1


def _bracket_end(text: str, start: int) -> int:
    """Index of the `]` closing the `[` at ``start`` (quotes and nested brackets respected)."""
    end = _scan(text, start, brace=False)
    if end < 0:
        raise InvalidInput(f"unclosed [ in {text!r}")
    return end


def to_jsonpath_ng(expr: str) -> tuple[str, bool]:
    """kubectl's path (``.a.b``, ``.items[*].x``, ``$.a``, ``@.a``, ``.metadata.labels.app\\.io/name``) as
    jsonpath-ng's text, and whether it starts from the root (``$``)."""
    expr = expr.strip()
    rooted = expr.startswith("$")
    rest = expr[1:] if expr[:1] in ("$", "@") else expr
    if rest and rest[0] not in ".[":
        rest = "." + rest  # relaxed: `metadata.name` is `.metadata.name`
    out, i = ["$"], 0
    while i < len(rest):
        c = rest[i]
        if c == "[":
            end = _bracket_end(rest, i)
            out.append(rest[i:end + 1])
            i = end + 1
            continue
        if c != ".":
            raise InvalidInput(f"unexpected {c!r} in {expr!r}")
        dots = 2 if rest.startswith("..", i) else 1
        i += dots
        name = []
        while i < len(rest) and rest[i] not in ".[":
            if rest[i] == "\\" and i + 1 < len(rest):
                i += 1
            elif rest[i].isspace():
                raise InvalidInput(f"unexpected space in {expr!r}")
            name.append(rest[i])
            i += 1
        key = "".join(name)
        if not key:
            if dots == 2 or (i < len(rest) and rest[i] == "["):
                out.append(".." if dots == 2 else "")  # `..[*]`; `.[0]` is `[0]`
                continue
            if i >= len(rest) and len(out) == 1:
                continue  # `{.}`: the current object
            raise InvalidInput(f"empty field name in {expr!r}")
        out.append("." * dots)
        out.append(key if key == "*" or _ID.match(key) else "'" + key.replace("'", "\\'") + "'")
    return "".join(out), rooted


def compile_expr(expr: str) -> _Expr:
    text, rooted = to_jsonpath_ng(expr)
    try:
        path = _jsonpath_parse(text)
    except Exception as exc:  # jsonpath-ng's lexer and parser errors
        raise InvalidInput(f"invalid JSONPath expression {{{expr}}}: {exc}") from exc
    return _Expr(expr, path, rooted)


def _action_end(text: str, start: int) -> int:
    """Index of the `}` closing the `{` at ``start`` (quoted strings and brackets respected)."""
    end = _scan(text, start + 1, brace=True)
    if end < 0:
        raise InvalidInput(f"unclosed {{ at position {start + 1}")
    return end


def parse_template(text: str) -> list[Any]:
    """Nodes of a kubectl JSONPath template: str (printed as it is), _Expr, _Range."""
    root: list[Any] = []
    stack: list[list[Any]] = [root]
    i = 0
    while i < len(text):
        start = text.find("{", i)
        if start < 0:
            stack[-1].append(text[i:])
            break
        if start > i:
            stack[-1].append(text[i:start])
        end = _action_end(text, start)
        action = text[start + 1:end].strip()
        i = end + 1
        if not action:
            raise InvalidInput("empty {} in the template")
        if action[0] == '"':
            try:
                literal = json.loads(action, strict=False)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"{{{action}}}: not a string literal: {exc.msg}") from exc
            if not isinstance(literal, str):
                raise InvalidInput(f"{{{action}}}: not a string literal")
            stack[-1].append(literal)
        elif action == "end":
            if len(stack) == 1:
                raise InvalidInput("{end} without {range ...}")
            stack.pop()
        elif action.split(None, 1)[0] == "range":
            parts = action.split(None, 1)
            if len(parts) < 2:
                raise InvalidInput("{range} needs an expression, e.g. {range .items[*]}")
            node = _Range(compile_expr(parts[1]))
            stack[-1].append(node)
            stack.append(node.body)
        else:
            stack[-1].append(compile_expr(action))
    if len(stack) > 1:
        raise InvalidInput("{range ...} without {end}")
    return root


def _scalar(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return ""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e21:
        return str(int(v))
    if isinstance(v, dict | list):
        return json.dumps(v, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return str(v)


def render_template(nodes: list[Any], root: Any, here: Any | None = None) -> str:
    here = root if here is None else here
    out: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Expr):
            out.append(" ".join(_scalar(v) for v in node.find(root, here)))
        else:
            for value in node.expr.find(root, here):
                out.append(render_template(node.body, root, value))
    return "".join(out)


# --- custom columns --------------------------------------------------------------------------------------


def parse_columns(spec: str) -> list[tuple[str, _Expr]]:
    columns = []
    for part in spec.split(","):
        header, sep, expr = part.partition(":")
        if not sep or not header:
            raise InvalidInput(f"unexpected custom-columns spec {part!r}, expected HEADER:EXPR")
        relaxed = expr.strip()
        if relaxed.startswith("{") and relaxed.endswith("}"):
            relaxed = relaxed[1:-1]
        if not relaxed:
            raise InvalidInput(f"custom-columns {header}: empty expression")
        columns.append((header, compile_expr(relaxed)))
    return columns


def _cell(values: list[Any]) -> str:
    shown = [v for v in values if v is not None]
    return ",".join(_scalar(v) for v in shown) if shown else "<none>"


def tabulate(rows: list[list[str]]) -> str:
    """Rows laid out as Go's tabwriter (min width 6, padding 3) lays out kubectl's: the last column unpadded."""
    if not rows:
        return ""
    widths = [max(6, max(len(r[c]) for r in rows) + 3) for c in range(len(rows[0]) - 1)]
    return "".join("".join(cell.ljust(w) for cell, w in zip(r, widths, strict=False)) + r[-1] + "\n"
                   for r in rows)


# --- the -o value ----------------------------------------------------------------------------------------


@dataclass
class Output:
    """A parsed ``-o``: ``format`` is one of LISTING; ``wide`` is the only one printed by rich."""

    format: str
    template: list[Any] = field(default_factory=list)
    columns: list[tuple[str, _Expr]] = field(default_factory=list)
    printed_header: bool = False  # custom-columns under --watch: the header once

    @property
    def machine(self) -> bool:
        return self.format != "wide"

    def text(self, doc: dict[str, Any]) -> str:
        """One document (an object, a List or any answer) in this format."""
        if self.format in ("json", "yaml"):
            return dumps(doc, self.format)
        if self.format == "jsonpath":
            return render_template(self.template, doc)
        items = doc["items"] if doc.get("kind") == "List" and isinstance(doc.get("items"), list) else [doc]
        if self.format == "name":
            return "".join(name_of(d) + "\n" for d in items)
        if self.format == "custom-columns":
            return tabulate([[h for h, _ in self.columns]] + [self._row(d) for d in items])
        raise InvalidInput(f"-o {self.format}: not a machine format")

    def _row(self, doc: dict[str, Any]) -> list[str]:
        return [_cell(e.find(doc, doc)) for _, e in self.columns]

    def write(self, doc: dict[str, Any]) -> None:
        write(self.text(doc))

    def write_list(self, items: list[dict[str, Any]], revision: int | str | None = None) -> None:
        self.write(as_list(items, revision))

    def write_event(self, obj: dict[str, Any], event: str | None = None) -> None:
        """One object seen by a watch (``event``: its type, when --output-watch-events asks for it)."""
        doc = {"type": event, "object": obj} if event is not None else obj
        if self.format == "json":
            write(dumps(doc, "json", compact=True))
        elif self.format == "yaml":
            write(("---\n" if self.printed_header else "") + dumps(doc, "yaml"))
            self.printed_header = True
        elif self.format == "custom-columns":
            rows = [self._row(obj)] if self.printed_header else [[h for h, _ in self.columns], self._row(obj)]
            write(tabulate(rows))
            self.printed_header = True
        else:
            write(self.text(obj))


def parse(value: str | None, accepted: tuple[str, ...] = LISTING) -> Output | None:
    """The ``-o`` value, checked: one line naming the accepted formats when it is not one of them."""
    if value is None:
        return None
    fmt, sep, arg = value.partition("=")
    fmt = fmt.strip()
    needs_arg = fmt in ("jsonpath", "custom-columns")
    if fmt not in accepted or sep and not needs_arg:
        raise InvalidInput(f"-o {value!r}: expected one of {accepted_text(accepted)}")
    if needs_arg and not arg.strip():
        raise InvalidInput(f"-o {value!r}: {_SHOWN[fmt]} needs a template after '=', e.g. "
                           + ("-o jsonpath='{.items[*].metadata.name}'" if fmt == "jsonpath" else
                              "-o custom-columns=NAME:.metadata.name,STATE:.status.state")
                           + f" (accepted: {accepted_text(accepted)})")
    try:
        if fmt == "jsonpath":
            return Output(fmt, template=parse_template(arg))
        if fmt == "custom-columns":
            return Output(fmt, columns=parse_columns(arg))
    except InvalidInput as exc:
        raise InvalidInput(f"-o {value!r}: {exc.message} (accepted: {accepted_text(accepted)})") from None
    return Output(fmt)
