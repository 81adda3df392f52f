import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.chat.pairing import (
    CODE_ALPHABET,
    CODE_LENGTH,
    CODE_TTL_S,
    Approval,
    Pairing,
    PairingDecision,
    PairingError,
    PairingOutcome,
    PairingStateError,
)

T0 = 1_000_000.0


def rng(seed: int = 7) -> random.Random:
    return random.Random(seed)


def new_code(pairing: Pairing, sender: str, platform: str = "telegram", now: float = T0) -> str:
    decision = pairing.request(platform, sender, now, random.Random(sender))
    assert decision.outcome is PairingOutcome.NEW_CODE
    assert decision.code is not None
    return decision.code


def test_alphabet_has_no_look_alikes() -> None:
    assert len(CODE_ALPHABET) == 32
    assert not set("0O1I") & set(CODE_ALPHABET)
    assert set(CODE_ALPHABET) == set("ABCDEFGHJKLMNPQRSTUVWXYZ23456789")


@given(st.integers(min_value=0, max_value=2**32))
def test_codes_are_eight_characters_from_the_alphabet(seed: int) -> None:
    decision = Pairing().request("telegram", "alice", T0, random.Random(seed))
    code = decision.code
    assert code is not None
    assert len(code) == CODE_LENGTH
    assert set(code) <= set(CODE_ALPHABET)


def test_default_randomness_is_the_system_source() -> None:
    codes = {Pairing().request("telegram", "alice", T0).code for _ in range(20)}
    assert len(codes) == 20


def test_a_sender_with_a_live_request_gets_no_second_code() -> None:
    pairing = Pairing()
    new_code(pairing, "alice")
    again = pairing.request("telegram", "alice", T0 + CODE_TTL_S - 1, rng())
    assert again == PairingDecision(PairingOutcome.ALREADY_PENDING)
    assert len(pairing.pending(T0)) == 1


def test_at_most_three_requests_pend_per_platform() -> None:
    pairing = Pairing()
    for sender in ("a", "b", "c"):
        new_code(pairing, sender)
    assert pairing.request("telegram", "d", T0, rng()) == PairingDecision(
        PairingOutcome.TOO_MANY_PENDING
    )
    # Another platform has its own three.
    new_code(pairing, "d", platform="discord")
    assert sorted(r.sender_id for r in pairing.pending(T0)) == ["a", "b", "c", "d"]


def test_expired_requests_are_purged_before_counting() -> None:
    pairing = Pairing()
    for sender in ("a", "b", "c"):
        new_code(pairing, sender)
    later = T0 + CODE_TTL_S
    assert pairing.pending(later) == []
    code = new_code(pairing, "d", now=later)
    assert [r.code for r in pairing.pending(later)] == [code]
    # The expired sender may ask again and gets a fresh code.
    assert pairing.request("telegram", "a", later, rng(3)).outcome is PairingOutcome.NEW_CODE


def test_expired_code_cannot_be_approved() -> None:
    pairing = Pairing()
    code = new_code(pairing, "alice")
    assert pairing.approve(code, T0 + CODE_TTL_S - 0.001).sender_id == "alice"
    code = new_code(pairing, "bob", now=T0)
    with pytest.raises(PairingError) as caught:
        pairing.approve(code, T0 + CODE_TTL_S)
    assert caught.value.code == "pairing_code_invalid"
    assert not pairing.is_approved("telegram", "bob")


def test_first_approval_on_a_platform_makes_the_owner() -> None:
    pairing = Pairing()
    alice, bob = new_code(pairing, "alice"), new_code(pairing, "bob")
    carol = new_code(pairing, "carol", platform="discord")
    assert pairing.approve(alice, T0) == Approval("telegram", "alice", is_owner=True)
    assert pairing.approve(bob, T0) == Approval("telegram", "bob", is_owner=False)
    assert pairing.approve(carol, T0) == Approval("discord", "carol", is_owner=True)
    assert pairing.is_owner("telegram", "alice")
    assert not pairing.is_owner("telegram", "bob")
    assert pairing.is_approved("telegram", "bob")
    assert not pairing.is_approved("discord", "alice")


def test_codes_are_single_use_and_case_insensitive() -> None:
    pairing = Pairing()
    code = new_code(pairing, "alice")
    pairing.approve(f" {code.lower()} ", T0)
    with pytest.raises(PairingError):
        pairing.approve(code, T0)
    assert pairing.pending(T0) == []


def test_unknown_code_is_refused() -> None:
    with pytest.raises(PairingError, match="unknown"):
        Pairing().approve("ABCDEFGH", T0)


def test_approved_sender_needs_no_code() -> None:
    pairing = Pairing()
    pairing.approve(new_code(pairing, "alice"), T0)
    assert pairing.request("telegram", "alice", T0, rng()).outcome is (
        PairingOutcome.ALREADY_APPROVED
    )


def test_revoke_withdraws_access_ownership_and_pending_requests() -> None:
    pairing = Pairing()
    pairing.approve(new_code(pairing, "alice"), T0)
    new_code(pairing, "bob")
    assert pairing.revoke("telegram", "alice")
    assert not pairing.is_approved("telegram", "alice")
    assert not pairing.is_owner("telegram", "alice")
    assert not pairing.revoke("telegram", "bob")
    assert pairing.pending(T0) == []
    # The owner seat is free again: the next approval takes it.
    assert pairing.approve(new_code(pairing, "carol"), T0).is_owner


def test_revoking_one_of_several_keeps_the_others() -> None:
    pairing = Pairing()
    pairing.approve(new_code(pairing, "alice"), T0)
    pairing.approve(new_code(pairing, "bob"), T0)
    pairing.revoke("telegram", "bob")
    assert pairing.is_approved("telegram", "alice")
    assert pairing.is_owner("telegram", "alice")


operations = st.lists(
    st.tuples(
        st.sampled_from(["request", "approve", "revoke"]),
        st.sampled_from(["telegram", "discord"]),
        st.sampled_from(["a", "b", "c", "d", "e"]),
        st.floats(min_value=0, max_value=2 * CODE_TTL_S),
    ),
    max_size=30,
)


@given(operations, st.integers(min_value=0, max_value=2**16))
def test_state_survives_a_json_round_trip(
    ops: list[tuple[str, str, str, float]], seed: int
) -> None:
    pairing, source, now = Pairing(), random.Random(seed), T0
    for op, platform, sender, step in ops:
        now += step
        if op == "request":
            pairing.request(platform, sender, now, source)
        elif op == "approve" and pairing.pending(now):
            pairing.approve(pairing.pending(now)[0].code, now)
        elif op == "revoke":
            pairing.revoke(platform, sender)
    stored = json.loads(json.dumps(pairing.to_dict()))
    assert Pairing.from_dict(stored) == pairing


@given(operations, st.integers(min_value=0, max_value=2**16))
def test_invariants_hold_over_any_history(
    ops: list[tuple[str, str, str, float]], seed: int
) -> None:
    pairing, source, now = Pairing(), random.Random(seed), T0
    for op, platform, sender, step in ops:
        now += step
        if op == "request":
            pairing.request(platform, sender, now, source)
        elif op == "approve" and pairing.pending(now):
            pairing.approve(pairing.pending(now)[-1].code, now)
        else:
            pairing.revoke(platform, sender)
        live = pairing.pending(now)
        for name in ("telegram", "discord"):
            on_platform = [r for r in live if r.platform == name]
            assert len(on_platform) <= 3
            assert len({r.sender_id for r in on_platform}) == len(on_platform)
            owner = pairing.owners.get(name)
            assert owner is None or pairing.is_approved(name, owner)
        # The pending store and the allowlist never disagree (research §2.3).
        assert not any(pairing.is_approved(r.platform, r.sender_id) for r in live)


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"version": 2, "pending": [], "approved": {}, "owners": {}},
        {"version": 1, "pending": [{"code": "0OOOOOOO"}], "approved": {}, "owners": {}},
        {
            "version": 1,
            "pending": [{"code": "ABCDEFGH", "platform": "t", "sender_id": "s"}],
            "approved": {},
            "owners": {},
        },
        {"version": 1, "pending": [], "approved": [], "owners": {}},
    ],
)
def test_malformed_state_is_refused(data: dict[str, object]) -> None:
    with pytest.raises(PairingStateError) as caught:
        Pairing.from_dict(data)
    assert caught.value.code == "pairing_state_invalid"
