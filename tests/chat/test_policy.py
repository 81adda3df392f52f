import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.chat.events import ChatKind, InboundEvent
from appliance.chat.pairing import CODE_ALPHABET, Pairing
from appliance.chat.policy import (
    Answer,
    Decision,
    DmPolicy,
    GroupPolicy,
    Ignore,
    IgnoreReason,
    PairingCode,
    decide,
    reconnect_decision,
    redact,
)

T0 = 5_000.0
NOBODY: frozenset[str] = frozenset()


def dm(sender: str = "stranger", text: str = "hello", platform: str = "telegram") -> InboundEvent:
    return InboundEvent(platform, "e1", "c1", ChatKind.DIRECT, sender, text)


def group(sender: str = "stranger", text: str = "@bot hi", mentioned: bool = True) -> InboundEvent:
    return InboundEvent("discord", "e2", "g1", ChatKind.GROUP, sender, text, mentions_bot=mentioned)


def run(
    event: InboundEvent,
    dm_policy: DmPolicy = "pairing",
    allow_from: frozenset[str] = NOBODY,
    pairing: Pairing | None = None,
    group_policy: GroupPolicy = "allowlist",
) -> Decision:
    return decide(
        event,
        dm_policy=dm_policy,
        allow_from=allow_from,
        pairing=pairing if pairing is not None else Pairing(),
        now=T0,
        group_policy=group_policy,
        rng=random.Random(1),
    )


def approved(sender: str, platform: str = "telegram") -> Pairing:
    pairing = Pairing()
    code = pairing.request(platform, sender, T0, random.Random(2)).code
    assert code is not None
    pairing.approve(code, T0)
    return pairing


def test_a_stranger_gets_a_pairing_code_once() -> None:
    pairing = Pairing()
    first = run(dm(), pairing=pairing)
    assert isinstance(first, PairingCode)
    assert len(first.code) == 8 and set(first.code) <= set(CODE_ALPHABET)
    assert first.code in first.text and "telegram" in first.text and "60 minutes" in first.text
    assert run(dm(), pairing=pairing) == Ignore(IgnoreReason.PAIRING_PENDING)


def test_the_fourth_stranger_is_ignored() -> None:
    pairing = Pairing()
    for sender in ("a", "b", "c"):
        assert isinstance(run(dm(sender), pairing=pairing), PairingCode)
    assert run(dm("d"), pairing=pairing) == Ignore(IgnoreReason.TOO_MANY_PENDING)


def test_the_owner_is_answered_and_marked() -> None:
    assert run(dm("alice", "  hi there \n"), pairing=approved("alice")) == Answer(
        "hi there", is_owner=True
    )


def test_an_allowlisted_sender_is_answered_but_not_owner() -> None:
    decision = run(dm("bob"), allow_from=frozenset({"bob"}))
    assert decision == Answer("hello", is_owner=False)


@pytest.mark.parametrize("policy", ["pairing", "allowlist"])
def test_star_allows_everyone(policy: DmPolicy) -> None:
    assert run(dm(), dm_policy=policy, allow_from=frozenset({"*"})) == Answer("hello")


def test_allowlist_policy_ignores_strangers_without_a_code() -> None:
    pairing = Pairing()
    assert run(dm(), dm_policy="allowlist", pairing=pairing) == Ignore(IgnoreReason.NOT_ALLOWED)
    assert pairing.pending(T0) == []


def test_allowlist_policy_still_answers_approved_senders() -> None:
    assert run(dm("alice"), dm_policy="allowlist", pairing=approved("alice")) == Answer(
        "hello", is_owner=True
    )


def test_open_policy_answers_anyone() -> None:
    assert run(dm(), dm_policy="open") == Answer("hello")


def test_disabled_policy_answers_nobody_in_dms() -> None:
    decision = run(dm("alice"), dm_policy="disabled", pairing=approved("alice"))
    assert decision == Ignore(IgnoreReason.DMS_DISABLED)


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text_is_ignored_and_creates_no_request(text: str) -> None:
    pairing = Pairing()
    assert run(dm(text=text), pairing=pairing) == Ignore(IgnoreReason.EMPTY_TEXT)
    assert pairing.pending(T0) == []


def test_approval_is_per_platform() -> None:
    decision = run(dm("alice", platform="discord"), pairing=approved("alice", "telegram"))
    assert isinstance(decision, PairingCode)


def test_groups_need_a_mention_even_when_open() -> None:
    for policy in ("allowlist", "open"):
        decision = run(group(mentioned=False), group_policy=policy, allow_from=frozenset({"*"}))
        assert decision == Ignore(IgnoreReason.NO_MENTION)


def test_group_strangers_get_no_code() -> None:
    pairing = Pairing()
    assert run(group(), pairing=pairing) == Ignore(IgnoreReason.NOT_ALLOWED)
    assert pairing.pending(T0) == []


def test_group_senders_allowed_by_config_or_approval() -> None:
    assert run(group("bob"), allow_from=frozenset({"bob"})) == Answer("@bot hi")
    assert run(group("alice"), pairing=approved("alice", "discord")) == Answer(
        "@bot hi", is_owner=True
    )


def test_open_group_policy_answers_anyone_who_mentions_the_bot() -> None:
    assert run(group(), group_policy="open") == Answer("@bot hi")


def test_group_policy_does_not_depend_on_dm_policy() -> None:
    assert run(group("bob"), dm_policy="disabled", allow_from=frozenset({"bob"})) == Answer(
        "@bot hi"
    )


@given(
    st.sampled_from(["pairing", "allowlist", "open", "disabled"]),
    st.sampled_from(["allowlist", "open"]),
    st.sampled_from(list(ChatKind)),
    st.booleans(),
    st.text(max_size=20),
    st.frozensets(st.sampled_from(["alice", "bob", "*"])),
)
def test_decisions_are_well_formed(
    dm_policy: DmPolicy,
    group_policy: GroupPolicy,
    kind: ChatKind,
    mentioned: bool,
    text: str,
    allow_from: frozenset[str],
) -> None:
    event = InboundEvent("telegram", "e", "c", kind, "bob", text, mentions_bot=mentioned)
    decision = run(event, dm_policy, allow_from, group_policy=group_policy)
    if isinstance(decision, Answer):
        assert decision.text == text.strip() != ""
        assert kind is ChatKind.DIRECT or mentioned
    elif isinstance(decision, PairingCode):
        assert kind is ChatKind.DIRECT and dm_policy == "pairing"
    else:
        assert isinstance(decision.reason, IgnoreReason)


DISCORD_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GAbCdE.abcdefghijklmnopqrstuvwxyz0123456789"
TELEGRAM_TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawq"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"token={DISCORD_TOKEN} ok", "token=[redacted] ok"),
        (
            f"GET https://api.telegram.org/bot{TELEGRAM_TOKEN}/getUpdates",
            "GET https://api.telegram.org/bot[redacted]/getUpdates",
        ),
        ("Authorization: Bearer xyz.abc-123/+= done", "Authorization: Bearer [redacted] done"),
        ("authorization: bearer EAAGm0PX4ZCps", "authorization: bearer [redacted]"),
        ("app token xapp-1-A0-123-abc, bot xoxb-1-2-abc", "app token [redacted], bot [redacted]"),
        ("call +447911123456 now", "call [phone] now"),
        ("call +44 7911 123456 now", "call [phone] now"),
        ("+1-555-123-4567", "[phone]"),
        ("chat 123456789 and +12345 and 2+2", "chat 123456789 and +12345 and 2+2"),
        ("nothing secret here", "nothing secret here"),
    ],
)
def test_redact_masks_tokens_and_phone_numbers(text: str, expected: str) -> None:
    assert redact(text) == expected


@given(st.text(max_size=40), st.text(max_size=40))
def test_redact_never_leaves_a_token_in_place(before: str, after: str) -> None:
    for secret in (DISCORD_TOKEN, TELEGRAM_TOKEN):
        assert secret not in redact(f"{before} {secret} {after}")


@pytest.mark.parametrize(
    ("platform", "signal", "expected"),
    [
        ("discord", 4004, "stop"),
        ("discord", 4010, "stop"),
        ("discord", 4011, "stop"),
        ("discord", 4012, "stop"),
        ("discord", 4013, "stop"),
        ("discord", 4014, "stop"),
        ("discord", "4014", "stop"),
        ("discord", 4000, "resume"),
        ("discord", 4001, "resume"),
        ("discord", 4002, "resume"),
        ("discord", 4003, "resume"),
        ("discord", 4005, "resume"),
        ("discord", 4008, "resume"),
        ("discord", 4007, "reconnect"),
        ("discord", 4009, "reconnect"),
        ("discord", 1000, "reconnect"),
        ("discord", 1001, "reconnect"),
        ("discord", 1006, "resume"),
        ("discord", "reconnect", "resume"),
        ("discord", "invalid_session_resumable", "resume"),
        ("discord", "invalid_session", "reconnect"),
        ("discord", "zombie", "resume"),
        ("telegram", 401, "stop"),
        ("telegram", "401", "stop"),
        ("telegram", 409, "reconnect"),
        ("telegram", 429, "reconnect"),
        ("telegram", 502, "reconnect"),
        ("slack", "link_disabled", "stop"),
        ("slack", "invalid_auth", "stop"),
        ("slack", "warning", "reconnect"),
        ("slack", "refresh_requested", "reconnect"),
        ("slack", "too_many_websockets", "reconnect"),
        ("whatsapp_cloud", 190, "stop"),
        ("whatsapp_web", "logged_out", "stop"),
        ("matrix", "M_UNKNOWN_TOKEN", "stop"),
        ("matrix", "M_LIMIT_EXCEEDED", "reconnect"),
        ("local", 1006, "reconnect"),
    ],
)
def test_reconnect_decisions(platform: str, signal: str | int, expected: str) -> None:
    assert reconnect_decision(platform, signal) == expected
