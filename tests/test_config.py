"""Config: TOML loading, validation with file + key + reason, params merging, roles, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncsynth.config import (
    POSITIVE_INT,
    STRING,
    ConfigError,
    check_table,
    config_from_dict,
    load_config,
    optional,
    single_endpoint_config,
)

GOOD = """
[defaults]
temperature = 0.7
seed = 1

[endpoints.qwen]
base_url = "http://localhost:8000/v1/"
model = "qwen2.5-7b"
api_key_env = "ASYNCSYNTH_TEST_KEY"
max_concurrency = 32
rpm = 600
tpm = 100000
timeout = 30
transport = "httpx"

[endpoints.qwen.params]
max_tokens = 256
top_p = 0.9
extra_body = { top_k = 40 }

[endpoints.llama]
base_url = "http://localhost:8001/v1"
model = "llama-3.1-8b"

[roles]
gen = ["qwen", "llama"]
review = "llama"

[engine]
max_attempts = 3
deadline = 60
backoff_base = 0.1
backoff_max = 2
journal = false

[gra]
anything = "kept raw for the pipeline"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "asyncsynth.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_loads_every_field(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    config = load_config(path)
    qwen = config.endpoints["qwen"]
    assert qwen.base_url == "http://localhost:8000/v1"  # trailing slash dropped
    assert qwen.model == "qwen2.5-7b"
    assert (qwen.max_concurrency, qwen.rpm, qwen.tpm, qwen.timeout) == (32, 600, 100000, 30)
    assert qwen.transport == "httpx"
    assert qwen.params == {"max_tokens": 256, "top_p": 0.9, "extra_body": {"top_k": 40}}
    assert config.roles == {"gen": ("qwen", "llama"), "review": ("llama",)}
    assert config.engine.max_attempts == 3
    assert config.engine.deadline == 60
    assert config.engine.journal is False
    assert config.sections["gra"] == {"anything": "kept raw for the pipeline"}
    assert config.source == str(path)


def test_roles_resolve_to_endpoints() -> None:
    config = config_from_dict(
        {
            "endpoints": {"a": {"base_url": "http://x/v1", "model": "m"}},
            "roles": {"gen": ["a"], "judge": "a"},
        }
    )
    assert config.role("gen") == ("a",)
    assert config.role("a") == ("a",)  # an endpoint name is a role of one
    with pytest.raises(ConfigError, match="several roles"):
        config.role(None)
    with pytest.raises(ConfigError, match="no role or endpoint named 'nope'"):
        config.role("nope")


def test_params_defaults_then_endpoint() -> None:
    config = config_from_dict(
        {
            "defaults": {"temperature": 0.5, "seed": 3, "extra_body": {"top_k": 40, "min_p": 0.1}},
            "endpoints": {
                "a": {
                    "base_url": "http://x/v1",
                    "model": "m",
                    "params": {"temperature": 0.9, "extra_body": {"top_k": 20}},
                }
            },
        }
    )
    assert config.params_for("a") == {
        "temperature": 0.9,
        "seed": 3,
        "extra_body": {"top_k": 20, "min_p": 0.1},
    }


EP = '[endpoints.a]\nbase_url = "http://u"\nmodel = "m"\n'
PARAMS = EP + "[endpoints.a.params]\n"


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        (EP + 'modle = "x"\n', "endpoints.a.modle", "unknown key"),
        ('[endpoints.a]\nbase_url = "http://u"\n', "endpoints.a.model", "missing required key"),
        ('[endpoints.a]\nmodel = "m"\n', "endpoints.a.base_url", "missing required key"),
        (
            '[endpoints.a]\nbase_url = "localhost:8000/v1"\nmodel = "m"\n',
            "endpoints.a.base_url",
            "not an http:// or https:// URL: 'localhost:8000/v1'",
        ),
        (
            '[endpoints.a]\nbase_url = "http://h:80a/v1"\nmodel = "m"\n',
            "endpoints.a.base_url",
            "is not a number",
        ),
        (EP + "max_concurrency = 0\n", "endpoints.a.max_concurrency", "must be >= 1"),
        (EP + "max_concurrency = 2.5\n", "endpoints.a.max_concurrency", "expected an integer"),
        (EP + "rpm = -5\n", "endpoints.a.rpm", "must be > 0"),
        (EP + "tpm = 0\n", "endpoints.a.tpm", "must be > 0"),
        (EP + 'timeout = "fast"\n', "endpoints.a.timeout", "expected a number"),
        (EP + "timeout = inf\n", "endpoints.a.timeout", "expected a number"),
        (EP + 'transport = "curl"\n', "endpoints.a.transport", "must be one of"),
        (EP + 'adaptive = "yes"\n', "endpoints.a.adaptive", "expected true or false"),
        (
            '[endpoints.a]\nbase_url = "http://u"\nmodel = ""\n',
            "endpoints.a.model",
            "non-empty string",
        ),
        (PARAMS + "temprature = 1\n", "endpoints.a.params.temprature", "unknown key"),
        (PARAMS + 'temperature = "hot"\n', "endpoints.a.params.temperature", "expected a number"),
        (PARAMS + "max_tokens = 0\n", "endpoints.a.params.max_tokens", "must be >= 1"),
        (PARAMS + "seed = 1.5\n", "endpoints.a.params.seed", "expected an integer"),
        (PARAMS + "extra_body = 3\n", "endpoints.a.params.extra_body", "expected a table"),
        ("[endpoints]\na = 3\n", "endpoints.a", "expected a table"),
        (EP + '[roles]\ngen = ["a", "b"]\n', "roles.gen", "unknown endpoint 'b'"),
        (EP + "[roles]\ngen = []\n", "roles.gen", "non-empty list"),
        ("[engine]\nmax_attempts = 0\n", "engine.max_attempts", "must be >= 1"),
        ("[engine]\nretries = 3\n", "engine.retries", "unknown key"),
        ("[engine]\njournal = 1\n", "engine.journal", "expected true or false"),
        ("[defaults]\ntemperature = -1\n", "defaults.temperature", "must be >= 0"),
        ('[endpoint.a]\nmodel = "m"\n', "endpoint", "unknown key"),
    ],
)
def test_refused_at_load_with_file_key_and_reason(
    tmp_path: Path, text: str, key: str, reason: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert f"{key}: " in message or message.endswith(key), message
    assert reason in message, message


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"{missing}: config file not found"):
        load_config(missing)
    bad = write(tmp_path, "[endpoints.a\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(bad)
    assert str(bad) in str(info.value)


def test_api_key_is_read_from_the_environment_and_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-test-SECRET-4242"
    monkeypatch.setenv("ASYNCSYNTH_TEST_KEY", secret)
    config = load_config(write(tmp_path, GOOD))
    qwen = config.endpoints["qwen"]
    assert qwen.api_key() == secret
    for shown in (repr(config), str(config), repr(qwen), str(qwen), repr(config.endpoints)):
        assert secret not in shown
    assert "ASYNCSYNTH_TEST_KEY" not in repr(qwen) or secret not in repr(qwen)
    monkeypatch.delenv("ASYNCSYNTH_TEST_KEY")
    with pytest.raises(ConfigError, match="ASYNCSYNTH_TEST_KEY is not set"):
        qwen.api_key()


def test_api_key_cannot_be_written_into_the_config(tmp_path: Path) -> None:
    text = '[endpoints.a]\nbase_url = "http://u"\nmodel = "m"\napi_key = "sk-inline"\n'
    with pytest.raises(ConfigError, match=r"endpoints\.a\.api_key: unknown key") as info:
        load_config(write(tmp_path, text))
    assert "sk-inline" not in str(info.value)


def test_single_endpoint_config_from_flags() -> None:
    config = single_endpoint_config(
        base_url="http://h/v1", model="m", max_concurrency=4, rpm=None, temperature=0.2
    )
    assert config.role(None) == ("default",)
    ep = config.endpoints["default"]
    assert (ep.base_url, ep.model, ep.max_concurrency, ep.rpm) == ("http://h/v1", "m", 4, None)
    assert ep.params == {"temperature": 0.2}
    with pytest.raises(ConfigError, match=r"command line: endpoints\.default\.max_concurrency"):
        single_endpoint_config(base_url="http://h/v1", model="m", max_concurrency=0)


def test_overrides_apply_to_the_chosen_role_only(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    changed = config.with_endpoint_overrides(
        config.role("review"), max_concurrency=2, temperature=0.1, rpm=None
    )
    assert changed.endpoints["llama"].max_concurrency == 2
    assert changed.endpoints["llama"].params == {"temperature": 0.1}
    assert changed.endpoints["qwen"] == config.endpoints["qwen"]
    assert config.with_endpoint_overrides(("qwen",), rpm=None) is config


def test_check_table_for_pipeline_sections() -> None:
    spec = {"rounds": POSITIVE_INT, "name": optional(STRING)}
    assert check_table({"rounds": 2}, spec, "gra") == {"rounds": 2}
    with pytest.raises(ConfigError, match=r"gra\.round: unknown key \(known keys: name, rounds\)"):
        check_table({"round": 2}, spec, "gra")
    with pytest.raises(ConfigError, match=r"gra\.rounds: missing required key"):
        check_table({}, spec, "gra", required=("rounds",))
    with pytest.raises(ConfigError, match=r"gra\.rounds: must be >= 1"):
        check_table({"rounds": 0}, spec, "gra")
