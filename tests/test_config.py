"""Configuration from the environment: bad values stop the process at start-up, naming the
variable, instead of running with them (a keepalive of 0 s sent keepalives in a loop)."""
from __future__ import annotations

import pytest

from config import Settings


@pytest.mark.parametrize("name, value, why", [
    ("KEEPALIVE_SECONDS", "abc", "not a valid float"),
    ("KEEPALIVE_SECONDS", "0", "not a positive number"),
    ("KEEPALIVE_SECONDS", "-5", "not a positive number"),
    ("KEEPALIVE_SECONDS", "nan", "not a positive number"),
    ("KEEPALIVE_SECONDS", "inf", "not a positive number"),
    ("MAX_PROMPT_CHARS", "0", "not a positive number"),
    ("DEMO_REPLY_TOKENS", "-3", "not a positive number"),
    ("LEASE_SECONDS", "0", "not a positive number"),
    ("OPENAI_MAX_RETRIES", "-1", "not a non-negative number"),
    ("WORKER_MAX_JOBS", "ten", "not a valid int"),
])
def test_a_bad_number_is_refused_naming_its_variable(monkeypatch, name, value, why):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name}=.*{why}"):
        Settings.from_env(secret_key="test")


@pytest.mark.parametrize("name, value", [("HISTORY_MAX_CHARS", "0"), ("DEMO_TOKEN_INTERVAL_MS", "0"), ("OPENAI_MAX_RETRIES", "0"),
                                         ("KEEPALIVE_SECONDS", "0.5")])
def test_the_lowest_good_values_are_taken(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert getattr(Settings.from_env(secret_key="test"), name.lower()) == float(value)


@pytest.mark.parametrize("value", ["9100", "0.0.0.0:", "0.0.0.0:http", "0.0.0.0:70000", ":9100"])
def test_a_worker_metrics_address_that_is_not_host_and_port_is_refused(monkeypatch, value):
    monkeypatch.setenv("WORKER_METRICS_BIND", value)
    with pytest.raises(ValueError, match="WORKER_METRICS_BIND=.*not host:port"):
        Settings.from_env(secret_key="test")


@pytest.mark.parametrize("value, address", [("0.0.0.0:9100", ("0.0.0.0", 9100)), ("[::1]:9100", ("::1", 9100))])
def test_a_worker_metrics_address_is_taken_as_host_and_port(monkeypatch, value, address):
    monkeypatch.setenv("WORKER_METRICS_BIND", value)
    assert Settings.from_env(secret_key="test").worker_metrics_address() == address
