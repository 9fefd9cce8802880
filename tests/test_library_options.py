"""kamisama()'s call forms and its checks, which all happen before any fork."""

from __future__ import annotations

import os

import pytest

from kamisama_server import KamisamaOptions, kamisama, worker_id
from kamisama_server.options import resolve_options
from kamisama_server.supervisor import backoff_delay, describe_exit


def run(wid: int) -> None:
    """A run function that is never called: every case here fails before forking."""


def test_four_call_forms_give_the_same_options(monkeypatch):
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    by_kwargs = resolve_options((), {"workers": 2, "run": run, "timeout": 5.0})
    by_mapping = resolve_options(({"workers": 2, "run": run, "timeout": 5.0},), {})
    by_object = resolve_options((KamisamaOptions(workers=2, run=run, timeout=5.0),), {})
    assert by_kwargs == by_mapping == by_object
    assert by_kwargs.workers == 2 and by_kwargs.timeout == 5.0 and by_kwargs.shutdown is None
    bare = resolve_options((run,), {})
    assert bare.run is run and bare.workers == 3 and bare.timeout == 10.0


def test_workers_default_to_cpu_count_without_web_concurrency(monkeypatch):
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    assert resolve_options((run,), {}).workers == (os.cpu_count() or 1)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {}, "needs a run function"),
        ((42,), {}, "expects a run function"),
        ((), {"run": "not callable"}, "run must be callable"),
        ((), {"run": run, "shutdown": 3}, "shutdown must be callable"),
        ((), {"run": run, "worker": 2}, "unknown kamisama option(s): worker"),
        ((), {"run": run, "workers": "2"}, "workers must be an int"),
        ((), {"run": run, "workers": True}, "workers must be an int"),
        ((), {"run": run, "timeout": "5"}, "timeout must be a number"),
        ((run, run), {}, "one positional argument"),
    ],
)
def test_wrong_types_raise_type_error(args, kwargs, message):
    with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        kamisama(*args, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": 0}, "workers must be at least 1"),
        ({"timeout": -1}, "timeout must be a non-negative"),
        ({"timeout": float("nan")}, "timeout must be a non-negative"),
    ],
)
def test_bad_values_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kamisama(run=run, **kwargs)


@pytest.mark.parametrize("value", ["four", "0", "-2", "2.5"])
def test_a_bad_web_concurrency_is_a_clear_value_error(monkeypatch, value):
    monkeypatch.setenv("WEB_CONCURRENCY", value)
    with pytest.raises(ValueError, match="WEB_CONCURRENCY"):
        kamisama(run)


def test_worker_id_is_none_in_the_master():
    assert worker_id() is None


def test_backoff_grows_exponentially_and_is_capped():
    delays = [backoff_delay(n) for n in range(10)]
    assert delays[:5] == [0.0, 0.1, 0.2, 0.4, 0.8]
    assert max(delays) == 4.0
    assert delays == sorted(delays)


def test_exit_reasons_name_the_code_or_the_signal():
    assert describe_exit(1 << 8) == "exited with code 1"
    assert describe_exit(9) == "was killed by SIGKILL"
