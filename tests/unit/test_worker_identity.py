"""A worker process's identity (host:pid), which names it in leases and audit entries."""

from __future__ import annotations

import os
import socket

import pytest
from celery import Celery

from worker.bootstrap import Runtime
from worker.settings import SettingsError, load_settings


def a_runtime(**overrides: object) -> Runtime:
    settings = load_settings(stripe_api_key="sk_test_x", **overrides)
    return Runtime(settings, Celery("identity-test", broker="memory://", set_as_current=False))


def test_a_process_is_named_by_the_configured_host_name_and_its_pid() -> None:
    # Given two deployments on one machine, each with a host name of its own
    first, second = a_runtime(host_name="bench-1"), a_runtime(host_name="bench-2")
    # When each names its process
    # Then the names tell the deployments apart, each with this process's pid
    assert first.identity == f"bench-1:{os.getpid()}"
    assert second.identity == f"bench-2:{os.getpid()}"


def test_without_a_configured_host_name_the_machine_s_host_name_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given no host name in the environment or the overrides
    monkeypatch.delenv("DEBIT_WORKER_HOST_NAME", raising=False)
    runtime = a_runtime()
    # When the process names itself / Then it is the machine's host name and its pid
    assert runtime.identity == f"{socket.gethostname()}:{os.getpid()}"


@pytest.mark.parametrize("name", ["", "host:1", "with space", "-leading", "x" * 101])
def test_a_host_name_that_would_blur_the_identity_is_refused_by_name(name: str) -> None:
    # Given a host name that is empty, holds the identity's separator, a space, starts with
    # a dash or is too long
    # When the settings are read / Then the variable is named in the refusal
    with pytest.raises(SettingsError, match="DEBIT_WORKER_HOST_NAME"):
        load_settings(stripe_api_key="sk_test_x", host_name=name)
