"""Near matches for names a user mistyped: capabilities (``scikit-learn`` → ``sklearn``) and servers.

Requirement matching stays exact and case-sensitive, as Seldon's is; only the *suggestions* are lenient
(known aliases, case, ``_`` versus ``-``, then difflib's fuzzy ratio for typos).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

# Names the ML ecosystem uses interchangeably for one framework.
ALIAS_GROUPS: tuple[frozenset[str], ...] = (
    frozenset({"sklearn", "scikit-learn", "scikitlearn"}),
    frozenset({"torch", "pytorch"}),
    frozenset({"tf", "tensorflow"}),
    frozenset({"xgb", "xgboost"}),
    frozenset({"lgbm", "lgb", "lightgbm"}),
    frozenset({"hf", "huggingface", "hugging-face"}),
    frozenset({"spark-mlib", "spark-mllib", "pyspark", "spark"}),
    frozenset({"onnx", "onnxruntime"}),
)
_ALIASES: dict[str, frozenset[str]] = {name: group for group in ALIAS_GROUPS for name in group}
FUZZY_CUTOFF = 0.75


def _norm(text: str) -> str:
    return text.strip().lower().replace("_", "-")


def near_match(wanted: str, offered: Sequence[str]) -> str | None:
    """The offered name the user most likely meant by ``wanted``, or None when nothing is close."""
    if not offered or wanted in offered:
        return None
    by_norm: dict[str, str] = {}
    for name in offered:
        by_norm.setdefault(_norm(name), name)
    key = _norm(wanted)
    if key in by_norm:  # same name up to case or '_'
        return by_norm[key]
    group = _ALIASES.get(key)
    if group is not None:
        for name in offered:  # offered order, so the answer is stable
            if _norm(name) in group:
                return name
    close = difflib.get_close_matches(key, list(by_norm), n=1, cutoff=FUZZY_CUTOFF)
    return by_norm[close[0]] if close else None


def suggestions(missing: Iterable[str], offered: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``(missing, suggestion)`` pairs for each missing name that has a near match."""
    out: list[tuple[str, str]] = []
    for name in missing:
        match = near_match(name, offered)
        if match is not None:
            out.append((name, match))
    return tuple(out)


def did_you_mean(pairs: Sequence[tuple[str, str]]) -> str:
    """``did you mean pytorch for torch, sklearn for scikit-learn?`` (empty when no pairs)."""
    if not pairs:
        return ""
    return "did you mean " + ", ".join(f"{good} for {bad}" for bad, good in pairs) + "?"
