"""`inv mutate`'s bookkeeping (tests/mutation.py): which mutants count, how the score is made, and
that the equivalents list names each mutant with a reason."""

from __future__ import annotations

import pytest

from tests import mutation


def test_the_configured_scope_names_modules_of_the_library_and_patterns_cover_it():
    conf = mutation.settings()
    assert conf.threshold == 85
    assert conf.equivalents.name == "mutation_equivalents.txt"
    for module, functions in conf.modules.items():
        assert (mutation.ROOT / "k3stack" / f"{module}.py").is_file()
        assert functions == "*" or (isinstance(functions, list) and functions)
    patterns = mutation.patterns({"retry": "*", "ollama": ["parse_name", "StallWatch.observe"]})
    assert patterns == ["k3stack.retry.*", "k3stack.ollama.x_parse_name*", "k3stack.ollama.xǁStallWatchǁobserve*"]


def test_only_the_functions_in_scope_count_and_equivalents_leave_the_score():
    results = {
        "k3stack.ollama.x_parse_name__mutmut_1": 1,  # killed
        "k3stack.ollama.x_parse_name__mutmut_2": 0,  # survived, listed as equivalent
        "k3stack.ollama.x_parse_name__mutmut_3": 0,  # survived
        "k3stack.ollama.x_parse_name__mutmut_10": 36,  # timeout: detected
        "k3stack.ollama.x_parse_name_twice__mutmut_1": 0,  # another function whose name starts alike
        "k3stack.ollama.xǁOllamaǁpull__mutmut_1": 0,  # out of scope
        "k3stack.ollama.x_normalise__mutmut_1": None,  # in scope, not run
        "k3stack.ollama.x_normalise__mutmut_2": 33,  # no test reaches it
    }
    equivalents = {"k3stack.ollama.x_parse_name__mutmut_2": "same result", "k3stack.retry.x_y__mutmut_1": "other"}
    score = mutation.score("ollama", ["parse_name", "normalise"], results, equivalents)
    assert score.killed == ["k3stack.ollama.x_parse_name__mutmut_1", "k3stack.ollama.x_parse_name__mutmut_10"]
    assert score.survived == [
        ("k3stack.ollama.x_normalise__mutmut_2", "no tests"),
        ("k3stack.ollama.x_parse_name__mutmut_3", "survived"),
    ]
    assert score.equivalent == [("k3stack.ollama.x_parse_name__mutmut_2", "same result")]
    assert score.not_run == ["k3stack.ollama.x_normalise__mutmut_1"]
    assert (score.total, score.score) == (6, 40.0)  # 2 killed of 6 - 1 equivalent
    assert mutation.overall([score]) == 40.0
    assert mutation.rerun("ollama", ["parse_name", "normalise"], results) == [
        "k3stack.ollama.x_normalise__mutmut_1",
        "k3stack.ollama.x_normalise__mutmut_2",
        "k3stack.ollama.x_parse_name__mutmut_2",
        "k3stack.ollama.x_parse_name__mutmut_3",
    ]
    assert mutation.stale_equivalents([score], equivalents | {"k3stack.ollama.x_normalise__mutmut_9": "x"}) == [
        "k3stack.ollama.x_normalise__mutmut_9"
    ]
    text = mutation.render([score], [], 85, 12.3, "today")
    assert "| ollama | 6 | 2 | 2 | 1 | 1 | 40.0 % |" in text
    assert "- `k3stack.ollama.x_parse_name__mutmut_3` (survived)" in text
    assert "- `k3stack.ollama.x_parse_name__mutmut_2` — same result" in text


def test_the_equivalents_list_gives_every_mutant_a_reason(tmp_path):
    listed = mutation.read_equivalents(mutation.settings().equivalents)
    assert all(name.startswith("k3stack.") and "__mutmut_" in name and reason for name, reason in listed.items())
    path = tmp_path / "eq.txt"
    path.write_text("# comment\n\nk3stack.a.x_f__mutmut_1  returns the same\n")
    assert mutation.read_equivalents(path) == {"k3stack.a.x_f__mutmut_1": "returns the same"}
    path.write_text("k3stack.a.x_f__mutmut_1\n")
    with pytest.raises(ValueError, match=r"eq.txt:1: k3stack.a.x_f__mutmut_1 has no reason"):
        mutation.read_equivalents(path)
    assert mutation.read_equivalents(tmp_path / "none.txt") == {}
