"""k3stack.reader: one place where files are parsed, every problem `file:line: what — fix: how`."""

from __future__ import annotations

import pytest
import yaml
from dotenv import dotenv_values

from k3stack import reader

ENV = "# comment\nexport A=1\nB='two words'  # inline\nC=\"x\\ny\"\nD=${A}\nE=\n\nF\nG='multi\nline'\r\nH=a#b\n"


def test_env_values_match_python_dotenv_literally(tmp_path):
    path = tmp_path / "x.env"
    path.write_text(ENV)
    assert reader.env_values(path) == dict(dotenv_values(path, interpolate=False))
    assert reader.env_values(path)["D"] == "${A}"  # never expanded


def test_yaml_documents_give_each_document_and_its_line():
    docs = reader.yaml_documents("a: 1\n---\n# only a comment\n---\nb: 2\n", "x.yaml")
    assert [(d.value, d.line) for d in docs] == [({"a": 1}, 1), ({"b": 2}, 5)]


def test_a_transform_sees_every_node_before_it_is_constructed():
    def upper(node, loader):
        for _, value in node.value:
            value.value = value.value.upper()

    assert reader.yaml_documents("a: x\n", "x.yaml", transform=upper)[0].value == {"a": "X"}


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("a: [1\n", 2, "expected ',' or ']'"),
        ("a: 1\n b: 2\n", 2, "mapping values are not allowed"),
        ("a: 1\n\tb: 2\n", 2, ""),
        ('a: "open\n', 2, "end of stream"),
        ("a: *nothing\n", 1, "undefined alias"),
        ("a: !!python/object:os.system x\n", 1, "could not determine a constructor"),
    ],
)
def test_a_yaml_error_is_file_line_what_and_fix(text, line, problem):
    with pytest.raises(reader.ReadError) as err:
        reader.yaml_documents(text, "k8s/t/x.yaml")
    assert err.value.line == line
    assert str(err.value).startswith(f"k8s/t/x.yaml:{line}: not valid YAML (")
    assert problem in str(err.value)  # PyYAML's words (libyaml's and the pure-Python parser's differ a little)
    assert str(err.value).endswith(f"— fix: {reader.YAML_FIX}")
    assert "\n" not in str(err.value)


def test_yaml_document_is_one_document_or_none():
    assert reader.yaml_document("", "k") is None
    assert reader.yaml_document("a: 1\n", "k") == {"a": 1}
    with pytest.raises(reader.ReadError, match=r"^k:3: holds 2 YAML documents, expected one — fix: keep only one$"):
        reader.yaml_document("a: 1\n---\nb: 2\n", "k")


def test_read_text_problems_are_one_line_each(tmp_path):
    with pytest.raises(reader.ReadError, match=r"missing: does not exist — fix:"):
        reader.read_text(tmp_path / "missing", shown="missing")
    with pytest.raises(reader.ReadError, match=r"is a directory, not a file — fix: name the file itself"):
        reader.read_text(tmp_path)
    (tmp_path / "bom").write_bytes(b"\xef\xbb\xbfa: 1\n")
    assert reader.read_text(tmp_path / "bom") == "a: 1\n"
    (tmp_path / "latin").write_bytes(b"a: 1\nb: caf\xe9\n")
    with pytest.raises(reader.ReadError, match=r"latin:2: not UTF-8 text \(byte 0xe9\) — fix: save the file as UTF-8"):
        reader.read_text(tmp_path / "latin", shown="latin")


def test_the_safe_loader_is_kept(tmp_path):
    with pytest.raises(reader.ReadError):
        reader.yaml_documents("!!python/name:os.system\n", "x")
    assert isinstance(reader.yaml_documents("a: 1", "x")[0].value, dict)


@pytest.mark.parametrize("loader", sorted({reader.SafeLoader, yaml.SafeLoader}, key=str))
def test_a_transform_sees_plain_scalars_as_pyyaml_does_under_either_parser(loader, monkeypatch):
    monkeypatch.setattr(reader, "SafeLoader", loader)
    styles = []

    def record(node, _):
        for key, value in node.value:
            styles.append((key.value, getattr(value, "style", "a collection")))

    reader.yaml_documents('plain: x\nquoted: "x"\nblock: |\n  x\nloop: &a [*a]\n', "x.yaml", transform=record)
    assert styles == [("plain", None), ("quoted", '"'), ("block", "|"), ("loop", "a collection")]
