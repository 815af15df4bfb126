"""`berth up` tells a user whose environment names a cluster that the CLI will talk to that cluster."""

from __future__ import annotations

from berth.daemons.up import kubeconfig_note

URL = "http://127.0.0.1:9004"


def test_kubeconfig_in_the_environment_is_named_with_the_way_to_this_berth_up() -> None:
    note = kubeconfig_note({"KUBECONFIG": "/home/me/.kube/config"}, URL)
    assert note is not None
    assert "/home/me/.kube/config" in note and f"--server {URL}" in note and f"BERTH_ADDRESS={URL}" in note


def test_no_note_without_kubeconfig_or_with_berth_address() -> None:
    assert kubeconfig_note({}, URL) is None
    assert kubeconfig_note({"KUBECONFIG": ""}, URL) is None
    assert kubeconfig_note({"KUBECONFIG": "/k", "BERTH_ADDRESS": URL}, URL) is None
