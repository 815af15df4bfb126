"""crds: print the CustomResourceDefinitions of Berth's kinds, for ``berth crds | kubectl apply -f -``."""

from __future__ import annotations

import typer

from berth.cli import output as out
from berth.errors import InvalidInput
from berth.kube.crds import all_crds, crd
from berth.resources.kinds import SPEC_SCHEMAS, kind_from_alias


def crds(
    kinds: list[str] = typer.Argument(None, help="Only these kinds (model, server, ...); default: all six"),
    output: str = typer.Option("yaml", "-o", "--output", help="yaml (multi-document) or json (a v1 List)"),
) -> None:
    """Print the mlops.seldon.io/v1alpha1 CRDs (generated from Berth's schemas) for kubectl apply."""
    if output not in ("yaml", "json"):
        raise InvalidInput(f"-o {output}: expected yaml or json")
    if kinds:
        wanted = [kind_from_alias(k) for k in kinds]
        bad = [k for k in wanted if k not in SPEC_SCHEMAS]
        if bad:
            raise InvalidInput(f"{', '.join(bad)} is a core Kubernetes kind, not a custom resource; "
                               f"CRDs exist for: {', '.join(SPEC_SCHEMAS)}")
        docs = [crd(k) for k in wanted]
    else:
        docs = all_crds()
    if output == "json":
        out.write(out.dumps(out.as_list(docs), "json"))
        return
    out.write("---\n".join(out.dumps(d, "yaml") for d in docs))
