import pytest

from dispatcher.errors import ConfigError
from dispatcher.settings import Settings


def test_defaults_match_the_documented_contract():
    s = Settings.from_env({})
    assert (s.redis_url, s.namespace) == ("redis://127.0.0.1:6379/0", "dispatch")
    assert (s.start_timeout, s.lease_timeout, s.heartbeat_interval, s.timeout_grace) == (
        15,
        30,
        5,
        60,
    )
    assert (s.reconcile_interval, s.max_message_bytes, s.ping_interval, s.ping_timeout) == (
        1,
        4194304,
        20,
        20,
    )
    assert s.connect_rate == 60


def test_environment_accepts_fractions_and_flags_override():
    env = {
        "DISPATCHER_START_TIMEOUT": "0.5",
        "DISPATCHER_LEASE_TIMEOUT": "1.25",
        "DISPATCHER_NAMESPACE": "ci",
        "DISPATCHER_CONNECT_RATE": "5",
    }
    s = Settings.from_env(env, namespace="other", redis_url=None)
    assert (s.start_timeout, s.lease_timeout, s.connect_rate) == (0.5, 1.25, 5)
    assert s.namespace == "other"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DISPATCHER_LEASE_TIMEOUT": "soon"}, "not a number"),
        ({"DISPATCHER_LEASE_TIMEOUT": "0"}, "lease_timeout"),
        ({"DISPATCHER_NAMESPACE": "a:b"}, "namespace"),
        ({"DISPATCHER_WAKE": "telepathy"}, "wake"),
        ({"DISPATCHER_WS_COMPRESSION": "maybe"}, "boolean"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_compression_is_off_by_default_and_can_be_switched_on():
    assert Settings.from_env({}).ws_compression is False
    assert Settings.from_env({"DISPATCHER_WS_COMPRESSION": "on"}).ws_compression is True
