import json

from hypothesis import given
from hypothesis import strategies as st

from appliance.chat.gateway_protocol import (
    FRAGMENT_BYTES,
    ClientMessage,
    FrameError,
    error_frame,
    outgoing,
    parse_client_frame,
    reply_frame,
)


def test_a_good_frame_parses() -> None:
    assert parse_client_frame('{"type": "message", "id": "7", "text": "hi"}') == ClientMessage(
        "7", "hi"
    )
    assert parse_client_frame(b'{"type": "message", "id": "7", "text": "hi"}') == ClientMessage(
        "7", "hi"
    )


def test_invalid_utf8_is_refused() -> None:
    assert parse_client_frame(b"\xff\xfe").code == "bad_json"  # type: ignore[union-attr]


def test_errors_echo_the_id_only_when_usable() -> None:
    error = parse_client_frame('{"type": "message", "id": "9"}')
    assert isinstance(error, FrameError) and error.id == "9"
    error = parse_client_frame(json.dumps({"type": "message", "id": "x" * 500, "text": "a"}))
    assert isinstance(error, FrameError) and error.id is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)


@given(
    st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200),
        st.fixed_dictionaries(
            {"type": st.sampled_from(["message", "x"]), "id": json_values, "text": json_values}
        ).map(json.dumps),
    )
)
def test_any_frame_parses_or_gets_an_error_never_an_exception(frame: str | bytes) -> None:
    result = parse_client_frame(frame)
    assert isinstance(result, ClientMessage | FrameError)
    if isinstance(result, FrameError):
        assert json.loads(error_frame(result))["code"] == result.code


@given(st.text(max_size=30_000))
def test_outgoing_fragments_large_payloads_at_16_kib(text: str) -> None:
    payload = reply_frame("1", text, "faq")
    frames = outgoing(payload)
    if isinstance(frames, str):
        assert len(frames.encode()) <= FRAGMENT_BYTES and frames == payload
    else:
        assert all(len(f) <= FRAGMENT_BYTES for f in frames) and len(frames) >= 2
        assert json.loads(b"".join(frames)) == json.loads(payload)
