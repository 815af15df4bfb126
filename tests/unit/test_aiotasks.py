"""Guarded tasks: a failure is logged at once with the task's name, then restarted with backoff (counted) or
handed to on_fatal; cancellation is quiet; fire-and-forget failures are logged."""

from __future__ import annotations

import asyncio
import logging

import pytest

from berth.aiotasks import FATAL_EXIT, guarded, log_failure, spawn


def test_failure_is_logged_at_once_then_restarted_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="berth.tasks")
    starts: list[float] = []

    async def flaky() -> None:
        starts.append(asyncio.get_running_loop().time())
        if len(starts) <= 3:
            raise RuntimeError(f"boom {len(starts)}")
        await asyncio.sleep(3600)

    async def main() -> None:
        task = guarded("flaky-loop", flaky, restart=True, backoff=(0.05, 0.1))
        await asyncio.sleep(0.001)
        # logged the moment it failed, not at shutdown
        first = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(first) == 1 and "flaky-loop" in first[0].getMessage() and "boom 1" in first[0].getMessage()
        assert first[0].exc_info is not None and first[0].exc_info[0] is RuntimeError
        for _ in range(200):
            if len(starts) == 4:
                break
            await asyncio.sleep(0.01)
        assert task.restarts == 3 and task.failures == 3 and not task.done()
        assert str(task.last_error) == "boom 3"
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        assert gaps[0] >= 0.045 and gaps[1] >= 0.095 and gaps[2] >= 0.095  # 0.05, then doubled, capped at 0.1
        await task.stop()
        assert task.done()

    asyncio.run(main())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 3 and all("task flaky-loop failed" in m for m in errors)


def test_backoff_resets_after_a_healthy_run() -> None:
    runs = 0

    async def sometimes() -> None:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.05 if runs % 2 == 0 else 0)  # every other run lasts "long enough"
        raise RuntimeError("again")

    async def main() -> list[float]:
        task = guarded("resets", sometimes, restart=True, backoff=(0.01, 10.0), healthy_after=0.04)
        await asyncio.sleep(0.5)
        await task.stop()
        return [task.restarts]

    # without the reset the delays would double to 10 s and only a handful of restarts would fit
    assert asyncio.run(main())[0] >= 6


def test_a_task_that_cannot_restart_calls_on_fatal(caplog: pytest.LogCaptureFixture) -> None:
    fatal: list[tuple[str, BaseException]] = []

    async def broken() -> None:
        raise ValueError("no way back")

    async def main() -> None:
        task = guarded("one-shot-root", broken, restart=False, on_fatal=lambda n, e: fatal.append((n, e)))
        await task.wait()
        assert task.done() and task.restarts == 0

    asyncio.run(main())
    assert [(n, str(e)) for n, e in fatal] == [("one-shot-root", "no way back")]
    assert any("task one-shot-root failed" in r.getMessage() for r in caplog.records)


def test_default_on_fatal_ends_the_process_non_zero() -> None:
    async def broken() -> None:
        raise ValueError("no way back")

    async def main() -> None:
        guarded("root", broken, restart=False)
        await asyncio.sleep(10)  # never reached: the loop is left with SystemExit

    with pytest.raises(SystemExit) as info:
        asyncio.run(main())
    assert info.value.code == FATAL_EXIT


def test_cancellation_and_a_clean_return_are_quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="berth.tasks")
    calls = 0

    async def forever() -> None:
        await asyncio.sleep(3600)

    async def returns() -> None:
        nonlocal calls
        calls += 1

    async def main() -> None:
        loop_task = guarded("forever", forever, restart=True)
        done_task = guarded("returns", returns, restart=True)
        await asyncio.sleep(0.01)
        await loop_task.stop()
        await done_task.wait()
        assert loop_task.task.cancelled() and loop_task.restarts == 0
        assert done_task.done() and done_task.restarts == 0

    asyncio.run(main())
    assert calls == 1
    assert caplog.records == []


def test_stop_cuts_a_backoff_short() -> None:
    async def broken() -> None:
        raise RuntimeError("down")

    async def main() -> None:
        stop = asyncio.Event()
        task = guarded("backing-off", broken, restart=True, backoff=(30.0, 30.0), stop=stop)
        await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task.wait(), timeout=1)
        assert task.done() and task.restarts == 0

    asyncio.run(main())


def test_fire_and_forget_failures_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def oops() -> None:
        raise KeyError("gone")

    async def cancelled() -> None:
        await asyncio.sleep(3600)

    async def main() -> None:
        spawn(oops(), "notify-watchers")
        quiet = log_failure(asyncio.ensure_future(cancelled()), "quiet")
        await asyncio.sleep(0.01)
        quiet.cancel()
        await asyncio.sleep(0.01)

    asyncio.run(main())
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "task notify-watchers failed: KeyError" in messages[0]
