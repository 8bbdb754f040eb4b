"""The gateway reads a body as Ollama's Go decoder does; the fake Ollama agrees with it."""

from __future__ import annotations

import json

import pytest

from llm_supervisor.gateway.gojson import BodyError, decode_object, fold
from llm_supervisor.gateway.ollama_api import POLICY_FIELDS
from tests.fakes.fake_ollama import go_decode


def decode(raw: bytes) -> dict[str, object]:
    decoded = decode_object(raw, POLICY_FIELDS)
    assert decoded is not None
    return decoded.payload


@pytest.mark.parametrize(
    ("raw", "model", "keep_alive"),
    [
        (b'{"model":"a","keep_alive":"5m","KEEP_ALIVE":0}', "a", 0),  # last duplicate wins
        (b'{"Model":"a","keep_alive":0}', "a", 0),  # keys match case-insensitively
        (b'{"model":"a","\\u212aeep_alive":0}', "a", 0),  # KELVIN SIGN folds to k (fold.go)
        (b'{"model":"a","MODEL":"b","model":null}', "b", None),  # null: string unchanged
        (b'{"model":"a","keep_alive":"5m","keep_alive":null}', "a", None),  # null: pointer nil
        (b'\n {"model":"a"} \r\n', "a", None),  # whitespace around is fine
    ],
)
def test_fields_resolve_as_go_decodes_them(raw: bytes, model: str, keep_alive: object) -> None:
    payload = decode(raw)
    assert (payload.get("model"), payload.get("keep_alive")) == (model, keep_alive)
    fake = go_decode(raw)  # the fake Ollama, written separately, reads the same
    assert (fake.get("model"), fake.get("keep_alive")) == (model, keep_alive)


def test_options_objects_merge_and_null_clears_them() -> None:
    assert decode(b'{"options":{"a":1},"OPTIONS":{"b":2}}')["options"] == {"a": 1, "b": 2}
    assert decode(b'{"options":{"a":1},"options":null}')["options"] is None
    assert go_decode(b'{"options":{"a":1},"OPTIONS":{"b":2}}')["options"] == {"a": 1, "b": 2}


def test_the_rewritten_body_has_exactly_one_of_each_policy_key() -> None:
    decoded = decode_object(b'{"Model":"a","keep_alive":"5m","KEEP_ALIVE":0}', POLICY_FIELDS)
    assert decoded is not None and not decoded.canonical
    pairs = json.loads(json.dumps(decoded.payload), object_pairs_hook=list)
    assert [k for k, _ in pairs] == ["model", "keep_alive"]
    plain = decode_object(b'{"model":"a","prompt":"x","keep_alive":-1}', POLICY_FIELDS)
    assert plain is not None and plain.canonical  # forwarded byte for byte


@pytest.mark.parametrize(
    "raw", [b'{"model":"a"}{"model":"b"}', b'{"model":"a"} x', b'{"model":"a"}\n[]']
)
def test_data_after_the_value_is_refused(raw: bytes) -> None:
    with pytest.raises(BodyError, match="after the JSON value"):
        decode_object(raw, POLICY_FIELDS)
    assert go_decode(raw)["model"] == "a"  # what Ollama would have used: the first object


def test_wrong_types_are_refused_like_go() -> None:
    with pytest.raises(BodyError, match="cannot unmarshal number"):
        decode_object(b'{"model":5,"MODEL":"a"}', POLICY_FIELDS)


def test_not_an_object_or_not_json_is_left_to_ollama() -> None:
    assert decode_object(b"[1]", POLICY_FIELDS) is None
    assert decode_object(b"{nope", POLICY_FIELDS) is None
    with pytest.raises(BodyError, match="invalid character 'N'"):  # Python would accept NaN
        decode_object(b'{"model": NaN}', POLICY_FIELDS)


def test_invalid_utf8_reads_as_replacement_characters_as_in_go() -> None:
    payload = decode(b'{"model":"a\xff","prompt":"x"}')
    assert payload["model"] == "a\ufffd"


def test_fold_matches_only_what_go_matches() -> None:
    assert fold("KEEP_ALIVE") == fold("keep_alive") == fold("\u212aeep_alive")
    assert fold("\u017ftream") == "stream"  # LATIN SMALL LETTER LONG S folds to s
    assert fold("k\u0130") != fold("ki")  # dotted capital I has no simple fold to i


def test_absurd_nesting_is_refused_not_a_crash() -> None:
    with pytest.raises(BodyError, match="nested too deeply"):
        decode_object(b'{"model":"a","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}", POLICY_FIELDS)
