"""``berth control --gc-policy on|off`` (BERTH_GC_POLICY): the collector policy can be switched off, e.g. to
compare both in the real process (bench/responsiveness.py); a wrong value stops the start, naming it."""

from __future__ import annotations

import pytest

from berth.control.settings import ControlSettings
from berth.errors import ConfigError
from berth.main import main as berth


def test_on_by_default_off_from_the_environment_and_the_flag_wins() -> None:
    assert ControlSettings.from_env({}).gc_policy == "on"
    assert ControlSettings.from_env({"BERTH_GC_POLICY": "off"}).gc_policy == "off"
    assert ControlSettings.from_env({"BERTH_GC_POLICY": "off"}, gc_policy="on").gc_policy == "on"
    with pytest.raises(ConfigError, match="BERTH_GC_POLICY"):
        ControlSettings.from_env({"BERTH_GC_POLICY": "sometimes"})


def test_a_bad_flag_value_stops_the_start_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert berth(["control", "--gc-policy", "sometimes"]) != 0
    err = capsys.readouterr().err
    assert "--gc-policy" in err and "on" in err and "off" in err
