from __future__ import annotations

import pytest

from features import Settings as FeaturesSettings
from mlmonitor.settings import DEFAULT_AMQP_URL, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("AMQP_URL", "RATE", "COUNT", "LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_work_locally():
    settings = load_settings(FeaturesSettings, [])
    assert (settings.amqp_url, settings.rate, settings.count) == (DEFAULT_AMQP_URL, 1.0, None)


def test_environment_variables_are_read(monkeypatch):
    monkeypatch.setenv("AMQP_URL", "amqp://env:env@rabbitmq:5672/")
    monkeypatch.setenv("RATE", "0")
    monkeypatch.setenv("COUNT", "5")
    settings = load_settings(FeaturesSettings, [])
    assert (settings.amqp_url, settings.rate, settings.count) == ("amqp://env:env@rabbitmq:5672/", 0.0, 5)


def test_flags_are_read():
    settings = load_settings(FeaturesSettings, ["--amqp-url", "amqp://cli@host/", "--rate", "0", "--count", "5"])
    assert (settings.amqp_url, settings.rate, settings.count) == ("amqp://cli@host/", 0.0, 5)


def test_flag_wins_over_environment_variable(monkeypatch):
    monkeypatch.setenv("AMQP_URL", "amqp://env@host/")
    monkeypatch.setenv("COUNT", "9")
    settings = load_settings(FeaturesSettings, ["--amqp-url", "amqp://cli@host/", "--count", "5"])
    assert (settings.amqp_url, settings.count) == ("amqp://cli@host/", 5)


@pytest.mark.parametrize("argv, mentions", [
    (["--rate", "-1"], "rate"),
    (["--rate", "fast"], "rate"),
    (["--count", "0"], "count"),
    (["--count", "abc"], "count"),
    (["--metrics-port", "70000"], "metrics_port"),
    (["--no-such-flag", "1"], "--no-such-flag"),
])
def test_invalid_flag_exits_with_a_short_error(capsys, argv, mentions):
    with pytest.raises(SystemExit) as caught:
        load_settings(FeaturesSettings, argv, prog="features")
    assert caught.value.code not in (0, None)
    error = capsys.readouterr().err
    assert mentions in error
    assert "Traceback" not in error


def test_invalid_environment_variable_exits_with_a_short_error(monkeypatch, capsys):
    monkeypatch.setenv("RATE", "-3")
    with pytest.raises(SystemExit) as caught:
        load_settings(FeaturesSettings, [], prog="features")
    assert caught.value.code not in (0, None)
    assert "rate" in capsys.readouterr().err


def test_an_empty_environment_variable_means_not_set(monkeypatch):
    monkeypatch.setenv("COUNT", "")
    monkeypatch.setenv("RATE", "")
    settings = load_settings(FeaturesSettings, [], prog="features")
    assert settings.count is None and settings.rate == 1.0
