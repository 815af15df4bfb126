"""``docs/settings.md``: the control plane's, the gateway's and ``berth up``'s settings, generated from their
declarations.

    python -m berth.daemons.settings_doc --markdown > docs/settings.md

``tests/unit/test_process_settings.py`` fails when the file is not what this prints.
"""

from __future__ import annotations

import sys

from berth.control.settings import ControlSettings
from berth.daemons.up import UpSettings
from berth.gateway.settings import GatewaySettings

HEADER = """# Settings of the control plane, the gateway and `berth up`

<!-- Generated from `berth.control.settings.ControlSettings`, `berth.gateway.settings.GatewaySettings` and
`berth.daemons.up.UpSettings` by `python -m berth.daemons.settings_doc --markdown`; do not edit. -->

Each process has one typed settings object. Every setting is read from its environment variables (the
first one set wins, so Berth's name beats Seldon's where Seldon has one) and can be given as a flag, which
wins over both. Ranges are checked once, at start: a wrong value stops the process with one line naming the
variable or flag and what it accepts, e.g. `error: BERTH_CONTROL_PORT='70000': a port must be between 1 and
65535`. Quantities use Kubernetes notation (`8Mi`, `2Gi`, `500M`). The agent's settings, declared on the
same base, are in [agent-settings.md](agent-settings.md). `berth up` passes its own settings to the control
plane and gateway it starts as flags, so theirs that it sets (ports, replica memory, storage policy) follow
it; the others are read from the environment `berth up` was started with.
"""


def settings_markdown() -> str:
    return "\n".join([HEADER, ControlSettings.markdown(), GatewaySettings.markdown(), UpSettings.markdown()])


def main(argv: list[str]) -> int:
    if argv != ["--markdown"]:
        print("usage: python -m berth.daemons.settings_doc --markdown", file=sys.stderr)
        return 2
    sys.stdout.write(settings_markdown())
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through main() by the test
    sys.exit(main(sys.argv[1:]))
