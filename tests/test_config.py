import asyncio
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.config import (
    ApplianceConfig,
    DiscordAdapterConfig,
    GatewayAdapterConfig,
    load_config,
    parse_config,
)
from appliance.config_lines import key_lines
from appliance.config_reference import render
from appliance.errors import ConfigError

GOOD = """\
# a device in the shop
[device]
name = "till-3"
log_level = "debug"

[status]
led_pin = 22
rgb_pins = [5, 6, 13]

[[adapters]]
type = "gateway"
port = 9000

[[adapters]]
type = "discord"
token = "abc.def"
"""


def problems(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test.toml")
    assert info.value.code == "config_invalid"
    return [(p.line, p.key, p.message) for p in info.value.problems]


def test_empty_file_gives_the_defaults() -> None:
    config = parse_config("")
    assert config == ApplianceConfig()
    assert config.status.led_pin == 17


def test_good_file_parses_into_typed_frozen_models() -> None:
    config = parse_config(GOOD)
    assert config.device.name == "till-3"
    assert config.status.rgb_pins == (5, 6, 13)
    gateway, discord = config.adapters
    assert isinstance(gateway, GatewayAdapterConfig) and gateway.port == 9000
    assert isinstance(discord, DiscordAdapterConfig)
    assert discord.token.get_secret_value() == "abc.def"
    with pytest.raises(ValueError, match="frozen"):
        config.device.name = "x"  # type: ignore[misc]


def test_unknown_key_is_refused_with_file_line_and_key() -> None:
    assert problems("[device]\nname = 'a'\nnmae = 'b'\n") == [
        (3, "device.nmae", "unknown key; did you mean 'name'? (see docs/reference/config.md)")
    ]


def test_unknown_table_is_refused() -> None:
    [(line, key, message)] = problems("\n\n[engines]\nthreads = 2\n")
    assert (line, key) == (3, "engines")
    assert message.startswith("unknown key")


def test_wrong_type_is_refused_with_file_line_and_key() -> None:
    assert problems("[status]\nled_pin = 'seventeen'\n") == [
        (2, "status.led_pin", "Input should be a valid integer (got a string)")
    ]


def test_string_is_not_silently_turned_into_a_number() -> None:
    [(_, key, _)] = problems('[supervisor]\nmax_crashes = "5"\n')
    assert key == "supervisor.max_crashes"


def test_error_in_the_second_adapter_names_its_index_and_line() -> None:
    text = GOOD + '\n[[adapters]]\ntype = "telegram"\ntoken = "t"\npoll_timeout_s = 99\n'
    assert problems(text) == [
        (21, "adapters[2].poll_timeout_s", "Input should be less than or equal to 50")
    ]


def test_missing_required_key_points_at_its_table() -> None:
    text = '[[adapters]]\ntype = "gateway"\n\n[[adapters]]\ntype = "telegram"\n'
    assert problems(text) == [(4, "adapters[1].token", "required key is missing")]


def test_unknown_adapter_type() -> None:
    [(line, key, message)] = problems('[[adapters]]\ntype = "irc"\n')
    assert (line, key) == (1, "adapters[0]")
    assert "gateway, discord, telegram" in message


def test_several_problems_are_all_reported() -> None:
    found = problems("[device]\nlog_level = 'loud'\n[status]\nled_pin = -1\nbogus = 1\n")
    assert [(line, key) for line, key, _ in found] == [
        (2, "device.log_level"),
        (4, "status.led_pin"),
        (5, "status.bogus"),
    ]


def test_broken_toml_is_refused_with_its_line() -> None:
    [(line, key, message)] = problems("[device]\nname = 'a'\nlog_level = \n")
    assert line == 3 and key == ""
    assert message.startswith("TOML syntax")


def test_error_message_names_file_line_and_key() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[status]\nled_pni = 4\n", "/etc/appliance/config.toml")
    assert "/etc/appliance/config.toml:2: status.led_pni: unknown key" in str(info.value)


def test_secret_never_appears_in_repr_or_errors() -> None:
    config = parse_config(GOOD)
    assert "abc.def" not in repr(config)
    assert "abc.def" not in str(config.model_dump())
    with pytest.raises(ConfigError) as info:
        parse_config("[[adapters]]\ntype = 'discord'\ntoken = 'abc.def'\nextra = 1\n")
    assert "abc.def" not in str(info.value)


def test_secret_reference_without_load_config_is_refused() -> None:
    [(_, key, message)] = problems("[[adapters]]\ntype = 'discord'\ntoken = { file = 't' }\n")
    assert key == "adapters[0].token"
    assert "load_config" in message


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def test_secrets_from_a_file_and_from_the_credentials_directory(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds / "tg", "telegram-secret\n")
    write(tmp_path / "discord.token", "discord-secret\n")
    write(
        tmp_path / "config.toml",
        "[[adapters]]\ntype = 'discord'\ntoken = { file = 'discord.token' }\n"
        "[[adapters]]\ntype = 'telegram'\ntoken = { credential = 'tg' }\n",
    )
    config = load_config(tmp_path / "config.toml", environ={"CREDENTIALS_DIRECTORY": str(creds)})
    discord, telegram = config.adapters
    assert isinstance(discord, DiscordAdapterConfig)
    assert discord.token.get_secret_value() == "discord-secret"
    assert telegram.token.get_secret_value() == "telegram-secret"  # type: ignore[union-attr]


def test_unreadable_secret_is_a_problem_with_line(tmp_path: Path) -> None:
    write(
        tmp_path / "config.toml",
        "[[adapters]]\ntype = 'telegram'\n\ntoken = { credential = 'tg' }\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "config.toml", environ={})
    [problem] = info.value.problems
    assert (problem.line, problem.key) == (4, "adapters[0].token")
    assert "CREDENTIALS_DIRECTORY" in problem.message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_config(tmp_path / "nope.toml")


def test_key_lines_handles_multiline_values_and_nested_array_tables() -> None:
    text = '''a = """
x = 1
"""
b = [
  1,
  2,
]
c = { d = 1, e = 2 }
[[t]]
k = 1
[t.sub]
v = 2
[[t]]
k = 3
"quoted.key" = 4
'''
    lines = key_lines(text)
    assert ("x",) not in lines
    assert lines[("b",)] == 4
    assert lines[("c", "e")] == 8
    assert lines[("t", 0, "k")] == 10
    assert lines[("t", 0, "sub", "v")] == 12
    assert lines[("t", 1, "k")] == 14
    assert lines[("t", 1, "quoted.key")] == 15


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("[]{}=\"'#.,\n adevicnmlotsup_0123")), max_size=120))
def test_any_text_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        parse_config(text)
    except ConfigError as err:
        assert err.problems
    key_lines(text)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["name", "nmae", "data_dir", "log_level", "x"]),
        st.one_of(st.integers(), st.text(max_size=5), st.booleans()),
        max_size=4,
    )
)
def test_every_problem_has_a_line(table: dict[str, object]) -> None:
    import json

    body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in table.items())
    try:
        parse_config(f"[device]\n{body}\n")
    except ConfigError as err:
        assert all(p.line is not None and p.line >= 1 for p in err.problems)


def test_reference_doc_matches_the_models() -> None:
    committed = Path(__file__).parent.parent / "docs" / "reference" / "config.md"
    assert committed.read_text(encoding="utf-8") == render(), "run `make docs`"


def test_example_config_in_overlays_is_valid() -> None:
    example = Path(__file__).parent.parent / "overlays" / "etc" / "appliance" / "config.toml"
    config = load_config(example, environ={})
    assert config.device.data_dir == Path("/data/appliance")


async def test_loading_in_a_thread_keeps_the_loop_free(tmp_path: Path) -> None:
    await asyncio.to_thread(write, tmp_path / "c.toml", GOOD)
    config = await asyncio.to_thread(load_config, tmp_path / "c.toml")
    assert config.device.name == "till-3"
