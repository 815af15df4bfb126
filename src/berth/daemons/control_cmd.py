"""`berth control`: the control plane process.

Its options are generated from ``berth.control.settings.ControlSettings`` (each also read from its
environment variables, Berth's and Seldon's; a flag wins); ``docs/settings.md`` lists them."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from berth.control.server import run_control
from berth.control.settings import ControlSettings
from berth.daemons.options import with_settings_options
from berth.daemons.runtime import run_until_signalled, setup_logging


@with_settings_options(ControlSettings)
def control(**flags: Any) -> None:
    """Run the control plane: API, store, scheduler, agent hub (and, with --provision, local replicas)."""
    settings = ControlSettings.from_env(os.environ, **flags)  # a wrong value stops here, naming it
    os.umask(0o077)  # every file and folder it (and the replicas it starts) writes is private to this user
    setup_logging(settings.log_level)
    opts = settings.options()
    opts.gc_policy = settings.gc_policy == "on"  # the collector is the process's, the control plane's alone

    async def main(stop: asyncio.Event) -> None:
        await run_control(opts, stop)

    run_until_signalled(main)
