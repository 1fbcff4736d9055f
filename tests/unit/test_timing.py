"""Renewal and retry scheduling: durations, margins, deterministic jitter and backoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agenttoken.core.timing import (
    EXPIRY_SAFETY_MARGIN,
    MAX_JITTER,
    MIN_RETRY_GAP,
    RenewalPolicy,
    backoff_delay,
    format_duration,
    next_retry_time,
    parse_duration,
    renewal_time,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)
M = timedelta(minutes=1)
S = timedelta(seconds=1)
MS = timedelta(milliseconds=1)


# --- parse_duration / format_duration -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("90s", timedelta(seconds=90)),
        ("1.5h", timedelta(hours=1, minutes=30)),
        ("2h0m0s", timedelta(hours=2)),
        ("250ms", timedelta(milliseconds=250)),
        ("1m500ms", timedelta(minutes=1, milliseconds=500)),
        ("0.5m", timedelta(seconds=30)),
        (".5s", timedelta(milliseconds=500)),
        ("1.s", timedelta(seconds=1)),
        ("168h", timedelta(days=7)),
        ("1h1h", timedelta(hours=2)),
        ("0h1s", timedelta(seconds=1)),
        ("0.000001s", timedelta(microseconds=1)),
    ],
)
def test_parse_duration_accepts_go_style(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "expected one or more"),
        ("0", "expected one or more"),
        ("10", "expected one or more"),
        ("h", "expected one or more"),
        ("1d", "expected one or more"),
        ("1us", "expected one or more"),
        ("1H", "expected one or more"),
        ("1 h", "expected one or more"),
        (" 1h", "expected one or more"),
        ("1h ", "expected one or more"),
        ("1.2.3s", "expected one or more"),
        ("1e3s", "expected one or more"),
        ("+1h", "expected one or more"),
        ("\uff11h", "expected one or more"),  # a full-width digit is not an ASCII digit
        ("-1h", "negative"),
        ("-0s", "negative"),
        ("0s", "greater than zero"),
        ("0h0m0s", "greater than zero"),
        ("0.0000001s", "greater than zero"),  # below one microsecond
        ("99999999999999999999h", "too large"),
    ],
)
def test_parse_duration_rejects_with_a_message_naming_the_text(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="invalid duration") as err:
        parse_duration(text)
    assert repr(text) in str(err.value)
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    ("td", "text"),
    [
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(hours=2), "2h"),
        (timedelta(days=7), "168h"),
        (timedelta(hours=1, seconds=5), "1h5s"),
        (timedelta(milliseconds=250), "250ms"),
        (timedelta(seconds=1, milliseconds=500), "1.5s"),
        (timedelta(microseconds=1), "0.000001s"),
        (timedelta(0), "0s"),
    ],
)
def test_format_duration(td: timedelta, text: str) -> None:
    assert format_duration(td) == text


def test_format_duration_rejects_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        format_duration(-S)


@given(st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=100_000)))
def test_format_then_parse_round_trips(td: timedelta) -> None:
    assert parse_duration(format_duration(td)) == td


@given(
    st.lists(
        st.tuples(st.integers(0, 10_000), st.sampled_from(["h", "m", "s", "ms"])), min_size=1, max_size=5
    )
)
def test_parse_sums_components(components: list[tuple[int, str]]) -> None:
    unit = {"h": H, "m": M, "s": S, "ms": timedelta(milliseconds=1)}
    text = "".join(f"{n}{u}" for n, u in components)
    expected = sum((n * unit[u] for n, u in components), timedelta(0))
    if expected == timedelta(0):
        with pytest.raises(ValueError, match="greater than zero"):
            parse_duration(text)
    else:
        assert parse_duration(text) == expected


# --- RenewalPolicy / renewal_time -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"renew_before": M, "renew_before_percentage": 10}, "mutually exclusive"),
        ({"renew_before": timedelta(0)}, "positive"),
        ({"renew_before": -M}, "positive"),
        ({"renew_before_percentage": 0}, "1 to 99"),
        ({"renew_before_percentage": 100}, "1 to 99"),
        ({"renew_before_percentage": True}, "1 to 99"),
    ],
)
def test_renewal_policy_rejects_nonsense(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        RenewalPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("policy", "lifetime", "renew_after"),
    [
        pytest.param(RenewalPolicy(), H, timedelta(minutes=40), id="default: a third remains"),
        pytest.param(RenewalPolicy(renew_before=10 * M), H, timedelta(minutes=50), id="renew_before"),
        pytest.param(RenewalPolicy(renew_before_percentage=25), H, timedelta(minutes=45), id="percentage"),
        pytest.param(RenewalPolicy(renew_before=H), H, timedelta(minutes=30), id="renew_before == lifetime"),
        pytest.param(
            RenewalPolicy(renew_before=5 * H), H, timedelta(minutes=30), id="renew_before > lifetime"
        ),
        pytest.param(RenewalPolicy(renew_before=59 * M), H, timedelta(minutes=6), id="clamped to 10%"),
        pytest.param(RenewalPolicy(renew_before_percentage=99), H, timedelta(minutes=6), id="99% clamped"),
        pytest.param(RenewalPolicy(renew_before_percentage=90), H, timedelta(minutes=6), id="90% exact"),
    ],
)
def test_renewal_time_without_jitter(
    policy: RenewalPolicy, lifetime: timedelta, renew_after: timedelta
) -> None:
    assert renewal_time(T0, T0 + lifetime, policy) == T0 + renew_after


@pytest.mark.parametrize(
    ("issued", "expires"),
    [(T0, T0), (T0, T0 - S), (T0.replace(tzinfo=None), T0 + H), (T0, (T0 + H).replace(tzinfo=None))],
)
def test_renewal_time_rejects_bad_times(issued: datetime, expires: datetime) -> None:
    with pytest.raises(ValueError, match="must be"):
        renewal_time(issued, expires, RenewalPolicy())


def test_jitter_is_deterministic_and_spreads_tokens() -> None:
    policy = RenewalPolicy()
    times = [renewal_time(T0, T0 + H, policy, f"uid-{i}") for i in range(200)]
    again = [renewal_time(T0, T0 + H, policy, f"uid-{i}") for i in range(200)]
    assert times == again
    # Within the 60 s window, 200 tokens should land on (nearly) all different seconds' worth of offsets.
    assert len({t.replace(microsecond=0) for t in times}) > 50


policies = st.one_of(
    st.just(RenewalPolicy()),
    st.builds(RenewalPolicy, renew_before=st.timedeltas(min_value=S, max_value=timedelta(days=30))),
    st.builds(RenewalPolicy, renew_before_percentage=st.integers(1, 99)),
)


@given(
    lifetime=st.timedeltas(min_value=S, max_value=timedelta(days=30)),
    policy=policies,
    key=st.text(min_size=1, max_size=40),
)
def test_renewal_time_properties(lifetime: timedelta, policy: RenewalPolicy, key: str) -> None:
    expires = T0 + lifetime
    plain = renewal_time(T0, expires, policy)
    jittered = renewal_time(T0, expires, policy, key)
    # Always inside the lifetime, never before 10% of it.
    assert T0 + lifetime / 10 <= jittered <= plain < expires
    # Jitter only moves renewal earlier, by at most min(10% of the margin, 60 s).
    margin = expires - plain
    assert plain - jittered <= min(margin / 10, MAX_JITTER) + timedelta(microseconds=1)
    # A restart recomputes the same time.
    assert renewal_time(T0, expires, policy, key) == jittered


# --- backoff ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempts", "delay"),
    [
        (-3, timedelta(0)),
        (0, timedelta(0)),
        (1, 5 * S),
        (2, 10 * S),
        (3, 20 * S),
        (4, 40 * S),
        (6, 160 * S),
        (7, 5 * M),
        (8, 5 * M),
        (10**9, 5 * M),
    ],
)
def test_backoff_delay(attempts: int, delay: timedelta) -> None:
    assert backoff_delay(attempts) == delay


def test_backoff_delay_custom_base_and_cap() -> None:
    assert backoff_delay(3, base=S, cap=H) == 4 * S
    assert backoff_delay(20, base=S, cap=H) == H


@given(st.integers(0, 200))
def test_backoff_is_monotonic_and_capped(n: int) -> None:
    assert backoff_delay(n) <= backoff_delay(n + 1) <= timedelta(minutes=5)


@pytest.mark.parametrize(
    ("attempts", "expires", "expected"),
    [
        pytest.param(1, None, T0 + 5 * S, id="no token: plain backoff"),
        pytest.param(8, T0 + H, T0 + 5 * M, id="far from expiry: plain backoff"),
        pytest.param(8, T0 + 2 * M, T0 + 2 * M - EXPIRY_SAFETY_MARGIN, id="capped before expiry"),
        pytest.param(1, T0 + 2 * M, T0 + 5 * S, id="short backoff already early enough"),
        pytest.param(8, T0 + 20 * S, T0 + 10 * S, id="inside safety margin: halfway to expiry"),
        pytest.param(1, T0 + 20 * S, T0 + 5 * S, id="inside safety margin: short backoff stands"),
        pytest.param(8, T0 + EXPIRY_SAFETY_MARGIN, T0 + 15 * S, id="at the margin: halfway"),
        pytest.param(8, T0 + 3 * S, T0 + 1500 * MS, id="3 s left: halfway"),
        pytest.param(8, T0 + 2 * S, T0 + 5 * M, id="2 s left: no last chance left, plain backoff"),
        pytest.param(8, T0, T0 + 5 * M, id="expires now: plain backoff"),
        pytest.param(8, T0 - H, T0 + 5 * M, id="already expired: plain backoff"),
    ],
)
def test_next_retry_time(attempts: int, expires: datetime | None, expected: datetime) -> None:
    assert next_retry_time(T0, attempts, expires) == expected


@given(
    attempts=st.integers(0, 50),
    remaining=st.one_of(st.none(), st.timedeltas(min_value=-timedelta(days=1), max_value=timedelta(days=1))),
)
def test_next_retry_time_properties(attempts: int, remaining: timedelta | None) -> None:
    expires = None if remaining is None else T0 + remaining
    retry = next_retry_time(T0, attempts, expires)
    assert T0 <= retry <= T0 + backoff_delay(attempts)
    if expires is not None and expires - EXPIRY_SAFETY_MARGIN > T0:
        assert retry <= expires - EXPIRY_SAFETY_MARGIN
    if expires is not None and expires - T0 > 2 * MIN_RETRY_GAP:
        assert retry < expires, "a failed renewal is retried before the token expires"
    if expires is not None and 2 * MIN_RETRY_GAP < expires - T0 <= EXPIRY_SAFETY_MARGIN:
        assert retry >= T0 + min(backoff_delay(attempts), MIN_RETRY_GAP), "last chances do not pile up"


@given(
    first=st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=2)),
    lifetime=st.timedeltas(min_value=timedelta(seconds=3), max_value=timedelta(hours=2)),
    took=st.timedeltas(min_value=timedelta(0), max_value=timedelta(seconds=5)),
)
def test_failing_renewals_get_a_last_chance_before_expiry_and_stop_soon_after(
    first: timedelta, lifetime: timedelta, took: timedelta
) -> None:
    """Every renewal fails, each attempt taking `took`: while more than 2 * MIN_RETRY_GAP of the
    token remain at a failure, the next retry comes before expiry; the retries stay finite."""
    expires = T0 + lifetime
    failure, attempts = T0 + min(first, lifetime), 1
    for _ in range(1000):
        retry = next_retry_time(failure, attempts, expires)
        if expires - failure > 2 * MIN_RETRY_GAP:
            assert retry < expires
        if retry >= expires:
            return
        failure, attempts = retry + took, attempts + 1
    raise AssertionError("retries never reached the expiry")


def test_next_retry_time_rejects_naive_times() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_retry_time(T0.replace(tzinfo=None), 1, None)
