"""MLServer model names of a model's versions: generation 1 keeps the model's name, later ones are ``NAME_GEN``.

``_`` never appears in a DNS-1123 name, so an instance name cannot collide with another model's name.
"""

from __future__ import annotations

from berth.resources.names import name_problem

SEP = "_"


def instance(name: str, generation: int) -> str:
    """The MLServer model name of generation ``generation`` of model ``name``."""
    return name if generation <= 1 else f"{name}{SEP}{generation}"


def model_of(inst: str) -> tuple[str, int]:
    """(model name, generation) of an instance name (the inverse of :func:`instance`)."""
    base, sep, tail = inst.rpartition(SEP)
    if sep and base and tail.isdigit():
        return base, int(tail)
    return inst, 1


def instance_problem(inst: str) -> str | None:
    """Why ``inst`` is neither a model name nor one of its versions' names (None: it is one)."""
    name, generation = model_of(inst)
    if inst != instance(name, generation):
        return f"model name: {inst!r} is not a valid model or model version name"
    return name_problem(name, what="model name")
