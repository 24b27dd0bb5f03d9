import pytest
from hypothesis import given
from hypothesis import strategies as st

from veriswarm.incentives.errors import LedgerError
from veriswarm.incentives.mechanism import (
    IncentiveParams,
    allocate,
    audit_probability,
    excluded,
    updated_reputation,
)

P = IncentiveParams()
addresses = st.sampled_from([f"0x{i:040x}" for i in range(1, 9)])


@given(pool=st.integers(0, 10**30), work=st.dictionaries(addresses, st.integers(0, 10**9), max_size=8),
       rep=st.floats(0.0, 1.0))
def test_allocation_conserves_the_pool_exactly(pool: int, work: dict[str, int], rep: float) -> None:
    out = allocate(pool, work, {a: rep for a in work}, P)
    assert all(v > 0 for v in out.values())
    weighted = sum(w * rep**P.gamma for w in work.values())
    if pool > 0 and weighted > 0:
        assert sum(out.values()) == pool
    else:
        assert out == {}


def test_allocation_follows_work_times_reputation_to_gamma() -> None:
    out = allocate(10**18, {"a": 100, "b": 100, "c": 300}, {"a": 1.0, "b": 0.5, "c": 1.0}, P)
    # weights 100, 25, 300 (gamma 2)
    assert out["c"] == pytest.approx(3 * out["a"], rel=1e-12)
    assert out["a"] == pytest.approx(4 * out["b"], rel=1e-12)
    assert sum(out.values()) == 10**18


def test_reputation_is_an_ema_and_exclusion_has_a_floor() -> None:
    r = P.initial_reputation
    for _ in range(200):
        r = updated_reputation(r, True, P)
    assert r > 0.99
    misses = 0
    while not excluded(r, P):
        r = updated_reputation(r, False, P)
        misses += 1
    assert 20 < misses < 60  # a long clean record is not lost to a few missed audits


def test_audit_probability_rises_as_reputation_falls_and_deters() -> None:
    ps = [audit_probability(r, P) for r in (0.2, 0.5, 0.8, 1.0)]
    assert ps == sorted(ps, reverse=True) and ps[0] == pytest.approx(P.p_max) and ps[-1] == pytest.approx(P.p_min)
    # Deterrence: p * (R + S) >= safety * C whenever stakes are given.
    p = audit_probability(1.0, P, cheat_gain=5.0, reward_at_risk=20.0, stake_at_risk=80.0)
    assert p * (20.0 + 80.0) >= P.safety * 5.0
    assert audit_probability(1.0, P, cheat_gain=1.0) == 1.0  # nothing at risk: audit everything


def test_params_are_validated() -> None:
    for bad in ({"ema_alpha": 0}, {"exclusion_floor": 0.9}, {"p_min": 0.5, "p_max": 0.1}, {"safety": 0.5}):
        with pytest.raises(LedgerError):
            IncentiveParams(**bad)  # type: ignore[arg-type]
