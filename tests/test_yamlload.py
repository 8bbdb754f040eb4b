"""The strict YAML reader: marks, duplicate keys, merges, and hostile input."""

from __future__ import annotations

import datetime

import pytest

from llm_supervisor.config.yamlload import MAX_DEPTH, Mark, YamlSyntaxError, load_yaml


def test_marks_point_at_keys_and_list_items() -> None:
    doc = load_yaml("gpu: 0\nservices:\n  a:\n    port: 8001\n    models: [x, y]\n")
    assert doc.marks[("gpu",)] == Mark(1, 1)
    assert doc.marks[("services", "a")] == Mark(3, 3)
    assert doc.marks[("services", "a", "port")] == Mark(4, 5)
    assert doc.marks[("services", "a", "models", 1)] == Mark(5, 17)


def test_mark_for_falls_back_to_the_nearest_ancestor() -> None:
    doc = load_yaml("services:\n  a:\n    engine: vllm\n")
    assert doc.mark_for(("services", "a", "port")) == Mark(2, 3)
    assert doc.mark_for(("nothing", "here")) == Mark(1, 1)


def test_keys_stay_as_written() -> None:
    # `off:` would become False -> "false" with a plain loader; keys are names here.
    assert load_yaml("off: 1\n1: 2\nnull: 3\n").data == {"off": 1, "1": 2, "null": 3}


def test_values_keep_yaml_types() -> None:
    data = load_yaml("a: off\nb: '0'\nc: 1.5\nd: 2024-01-02\ne: ~\n").data
    assert data == {"a": False, "b": "0", "c": 1.5, "d": datetime.date(2024, 1, 2), "e": None}


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("a: 1\na: 2\n", 2, "duplicate key 'a' (first defined at line 1)"),
        ("a:\n  b: 1\n  c: 2\n  b: 3\n", 4, "duplicate key 'b' (first defined at line 2)"),
        ("a:\n\tb: 1\n", 2, "tab characters"),
        ("a: [1, 2\n", 2, "YAML syntax error"),
        ("a: 1\n---\nb: 2\n", 2, "one YAML document"),
        ("a: !!int abc\n", 1, "invalid value 'abc'"),
        ("a: !!binary zz\n", 1, "invalid value 'zz'"),
        ("a: !env HOME\n", 1, "could not determine a constructor"),
        ("a: !!python/object/apply:os.system [ls]\n", 1, "unsupported tag"),
        ("a: !!set {x}\n", 1, "unsupported tag"),
        ("<<: 5\n", 1, "for merging"),
        ("? [a]\n: 1\n", 1, "mapping keys must be plain strings"),
        ("a: &x {b: *x}\n", 1, "recursive alias"),
        ("&x [*x]\n", 1, "recursive alias"),
    ],
)
def test_errors_have_positions(text: str, line: int, fragment: str) -> None:
    with pytest.raises(YamlSyntaxError) as err:
        load_yaml(text)
    assert fragment in str(err.value)
    assert err.value.mark.line == line


def test_duplicate_key_error_names_the_key_path() -> None:
    with pytest.raises(YamlSyntaxError) as err:
        load_yaml("services:\n  a:\n    port: 1\n    port: 2\n")
    assert err.value.path == ("services", "a", "port")


def test_merge_keys_may_be_overridden_but_written_keys_not_repeated() -> None:
    text = "base: &b {port: 1, model: m}\nsvc: {<<: *b, port: 2}\nagain: {<<: *b}\n"
    data = load_yaml(text).data
    assert data["svc"] == {"port": 2, "model": "m"}
    assert data["again"] == {"port": 1, "model": "m"}
    with pytest.raises(YamlSyntaxError, match="duplicate key 'port'"):
        load_yaml("base: &b {x: 1}\nsvc: {<<: *b, port: 2, port: 3}\n")


def test_alias_bomb_is_stopped() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    with pytest.raises(YamlSyntaxError, match="aliases expanding"):
        load_yaml("\n".join(lines) + "\n")


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(YamlSyntaxError, match="nesting"):
        load_yaml("[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5))
    with pytest.raises(YamlSyntaxError, match="nesting"):
        load_yaml("[" * 5000)  # the composer itself would recurse past Python's limit


def test_empty_and_comment_only_documents_are_none() -> None:
    assert load_yaml("").data is None
    assert load_yaml("# just a comment\n").data is None


def test_byte_order_mark_is_accepted() -> None:
    assert load_yaml("\ufeffgpu: 0\n").data == {"gpu": 0}
