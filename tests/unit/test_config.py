"""Settings from environment variables."""

import dataclasses

import pytest

from qdata_server.config import ConfigError, Settings


def test_defaults_run_the_embedded_database_with_migrations_and_seed():
    settings = Settings.from_env({})
    assert settings.embedded
    assert settings.migrate_on_start and settings.seed_on_start
    assert settings.listen_address == "127.0.0.1:50051"
    assert settings.bcrypt_cost == 12


def test_database_url_turns_off_automatic_migration_and_seeding():
    settings = Settings.from_env({"DATABASE_URL": "postgresql://db/qdata"})
    assert not settings.embedded
    assert not settings.migrate_on_start and not settings.seed_on_start
    forced = Settings.from_env({"DATABASE_URL": "postgresql://db/qdata", "QDATA_MIGRATE_ON_START": "true"})
    assert forced.migrate_on_start


def test_an_owner_url_alone_is_no_embedded_database():
    # Operator commands act on it; nothing falls back to (or generates keys for) the embedded one.
    settings = Settings.from_env({"QDATA_OWNER_DATABASE_URL": "postgresql://owner@db/qdata"})
    assert not settings.embedded
    assert not settings.migrate_on_start and not settings.seed_on_start


def test_values_are_parsed():
    settings = Settings.from_env(
        {
            "QDATA_WORKERS": "3",
            "QDATA_BCRYPT_COST": "10",
            "QDATA_LOCKOUT_THRESHOLD": "7",
            "QDATA_SHUTDOWN_GRACE_SECONDS": "2.5",
            "QDATA_LOG_LEVEL": "debug",
            "QDATA_PREPARED_STATEMENTS": "false",
        }
    )
    assert settings.prepared_statements is False
    assert (settings.workers, settings.bcrypt_cost, settings.lockout_threshold) == (3, 10, 7)
    assert settings.shutdown_grace_seconds == 2.5
    assert settings.log_level == "DEBUG"
    assert settings.effective_workers == 3


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"QDATA_WORKERS": "many"}, "QDATA_WORKERS must be an integer"),
        ({"QDATA_BCRYPT_COST": "3"}, "QDATA_BCRYPT_COST must be between 4 and 31"),
        ({"QDATA_POOL_MIN_SIZE": "20", "QDATA_POOL_MAX_SIZE": "5"}, "must not exceed"),
        ({"QDATA_LOG_LEVEL": "LOUD"}, "QDATA_LOG_LEVEL"),
        ({"QDATA_SHUTDOWN_GRACE_SECONDS": "-1"}, "at least 0"),
        ({"QDATA_PREPARED_STATEMENTS": "sometimes"}, "true or false"),
        ({"QDATA_METRICS_LISTEN_ADDRESS": "9464"}, "QDATA_METRICS_LISTEN_ADDRESS must be host:port"),
        ({"QDATA_METRICS_LISTEN_ADDRESS": "127.0.0.1:50051"}, "QDATA_METRICS_LISTEN_ADDRESS must differ"),
    ],
)
def test_bad_values_are_named(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


# Every boolean setting, named after its field (a new one is checked without being listed here).
BOOLEAN_SETTINGS = sorted(f"QDATA_{f.name.upper()}" for f in dataclasses.fields(Settings) if f.type == "bool")


def test_the_boolean_settings_are_the_known_ones():
    assert BOOLEAN_SETTINGS == [
        "QDATA_ALLOW_INSECURE",
        "QDATA_MIGRATE_ON_START",
        "QDATA_PREPARED_STATEMENTS",
        "QDATA_REFLECTION",
        "QDATA_SEED_ON_START",
    ]


@pytest.mark.parametrize("name", BOOLEAN_SETTINGS)
def test_an_unknown_boolean_value_is_refused_naming_the_setting_and_the_accepted_values(name):
    # Under DATABASE_URL, where QDATA_MIGRATE_ON_START and QDATA_SEED_ON_START default to false.
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"DATABASE_URL": "postgresql://db/qdata", name: "ture"})
    assert str(refused.value) == f"{name} must be true or false (one of 1, true, yes, 0, false, no), got 'ture'"


@pytest.mark.parametrize("name", BOOLEAN_SETTINGS)
@pytest.mark.parametrize(("raw", "value"), [("1", True), ("TRUE", True), ("yes", True), ("0", False), ("No", False)])
def test_boolean_values_are_read_alike_for_every_setting(name, raw, value):
    settings = Settings.from_env({"DATABASE_URL": "postgresql://db/qdata", name: raw})
    field = name.removeprefix("QDATA_").lower()
    assert getattr(settings, field) is value


def test_metrics_are_off_unless_an_address_is_given():
    assert Settings.from_env({}).metrics_listen_address == ""
    assert (
        Settings.from_env({"QDATA_METRICS_LISTEN_ADDRESS": "127.0.0.1:9464"}).metrics_listen_address == "127.0.0.1:9464"
    )
