"""MooreMachine: completion, trimming, minimisation, counterexamples, DOT and JSON export.

References are brute force: outputs of every input up to a length bound that is enough to
tell any two inequivalent machines of these sizes apart.
"""

import itertools
import json
import re

import numpy as np
import pytest

from grokfast.automata import moore
from grokfast.automata import MooreMachine, count_mod, parity, random_automaton


# ----- brute-force references -----

def all_words(num_symbols: int, length: int) -> np.ndarray:
    """Every word of the given length, in lexicographic order ([A**L, L])."""
    words = list(itertools.product(range(num_symbols), repeat=length))
    return np.array(words, dtype=np.int64).reshape(len(words), length)


def walk(m: MooreMachine, start: int, words: np.ndarray) -> np.ndarray:
    """States after each symbol; -1 from the first undefined transition on."""
    s = np.full(len(words), start, dtype=np.int64)
    states = np.empty(words.shape, dtype=np.int64)
    for t in range(words.shape[1]):
        s = np.where(s >= 0, m.transitions[np.maximum(s, 0), words[:, t]], -1)
        states[:, t] = s
    return states


def emit(m: MooreMachine, start: int, words: np.ndarray) -> np.ndarray:
    """Outputs after each symbol, -1 standing for "undefined"."""
    states = walk(m, start, words)
    return np.where(states >= 0, m.outputs[np.maximum(states, 0)], -1)


def reference_num_states(m: MooreMachine) -> int:
    """States of a minimal equivalent machine, from signatures (outputs of all words).

    One state per distinct signature among the states entered by a non-empty input, plus
    one for the initial state unless its signature without its own output matches one.
    """
    n = m.num_states
    entered = set(walk(m, m.initial, all_words(m.num_symbols, n)).ravel().tolist()) - {-1}
    words = all_words(m.num_symbols, n + 1)
    tail = {q: tuple(emit(m, q, words).ravel().tolist()) for q in range(n)}
    sigs = {(int(m.outputs[q]),) + tail[q] for q in entered}
    return len(sigs) + (0 if any(tail[q] == tail[m.initial] for q in entered) else 1)


def reference_counterexample(a: MooreMachine, b: MooreMachine, length: int):
    """The lexicographically smallest shortest distinguishing word up to ``length``."""
    words = all_words(a.num_symbols, length)
    diff = emit(a, a.initial, words) != emit(b, b.initial, words)
    if not diff.any():
        return None
    k = int(np.argmax(diff.any(axis=0)))  # first step at which some word differs
    row = int(np.argmax(diff[:, k]))  # prefixes of lex-ordered words are lex-ordered
    return words[row, :k + 1]


def permuted(m: MooreMachine, seed: int, junk: int = 0) -> MooreMachine:
    """An isomorphic copy with states shuffled, plus ``junk`` unreachable states."""
    rng = np.random.default_rng(seed)
    n = m.num_states + junk
    p = rng.permutation(n)
    t = np.empty((n, m.num_symbols), dtype=np.int64)
    o = np.empty(n, dtype=np.int64)
    t[p[:m.num_states]] = np.where(m.transitions >= 0, p[np.maximum(m.transitions, 0)], -1)
    o[p[:m.num_states]] = m.outputs
    # Junk points anywhere, so nothing reachable points to it.
    t[p[m.num_states:]] = rng.integers(-1, n, size=(junk, m.num_symbols))
    o[p[m.num_states:]] = rng.integers(0, 4, size=junk)
    return MooreMachine(t, o, int(p[m.initial]))


def variant(kind: str, n: int, a: int, n_outputs: int, seed: int) -> MooreMachine:
    """random_automaton, or one with a fresh initial state, or with transitions removed."""
    m = random_automaton(n, a, seed, n_outputs=n_outputs)
    rng = np.random.default_rng(1000 + seed)
    if kind == "fresh_init":  # not re-entered: its output is a don't-care
        # even seeds: a copy of some state's successors (merges); odd: random successors
        row = m.transitions[rng.integers(n)] if seed % 2 == 0 else rng.integers(n, size=a)
        t = np.concatenate([m.transitions, row[None]])
        return MooreMachine(t, np.append(m.outputs, rng.integers(n_outputs)), n)
    if kind == "partial":
        t = np.where(rng.random(m.transitions.shape) < 0.25, -1, m.transitions)
        return MooreMachine(t, m.outputs, 0)
    return m


def initial_reentered(m: MooreMachine) -> bool:
    t = m.trim()
    return bool((t.transitions == 0).any())


# ----- complete and trim -----

PARTIAL = MooreMachine([[1, -1], [1, 0]], [0, 1])


@pytest.mark.parametrize("m", [parity(), count_mod(3), random_automaton(5, 3, 2)])
def test_complete_of_complete_machine_is_an_equal_copy(m):
    c = m.complete()
    assert c == m and c is not m


@pytest.mark.parametrize("m", [PARTIAL, MooreMachine([[-1, -1]], [0]),
                               MooreMachine([[0, -1, 2], [1, 1, 1], [-1, 0, 0]], [2, 0, 1], 2)])
def test_complete_routes_undefined_to_a_fresh_sink(m):
    c = m.complete()
    S = m.num_states
    assert c.is_complete and c.num_states == S + 1 and c.initial == m.initial
    assert (c.transitions[S] == S).all()
    assert c.outputs[S] == m.num_outputs and (c.outputs[:S] == m.outputs).all()
    defined = m.transitions >= 0
    assert (c.transitions[:S][defined] == m.transitions[defined]).all()
    assert (c.transitions[:S][~defined] == S).all()


@pytest.mark.parametrize("m, expected", [
    (parity(), parity()),
    # 1 and 3 unreachable; BFS from 2: 2 -> 0 on symbol 0, 2 -> 4 on symbol 1
    (MooreMachine([[0, 2], [1, 1], [0, 4], [2, 1], [-1, 4]], [1, 2, 0, 3, 4], 2),
     MooreMachine([[1, 2], [1, 0], [-1, 2]], [0, 1, 4])),
    (MooreMachine([[0, 0], [0, 1]], [0, 1], 1), MooreMachine([[1, 0], [1, 1]], [1, 0])),
])
def test_trim_keeps_reachable_states_in_bfs_order(m, expected):
    assert m.trim() == expected


# ----- minimize: known cases -----

def doubled_count_mod(k: int) -> MooreMachine:
    """count_mod(k) with every state split into two copies that alternate."""
    s = np.arange(2 * k)
    r, c = s % k, s // k
    t = np.stack([(1 - c) * k + r, (1 - c) * k + (r + 1) % k], axis=1)
    return MooreMachine(t, r)


MINIMIZE_CASES = [
    ("parity_duplicated", MooreMachine([[2, 1], [3, 0], [0, 3], [1, 2]], [0, 1, 0, 1]),
     parity()),
    ("count_mod_2_doubled", doubled_count_mod(2), count_mod(2)),
    ("count_mod_3_doubled", doubled_count_mod(3), count_mod(3)),
    ("count_mod_5_doubled", doubled_count_mod(5), count_mod(5)),
    ("count_mod_4_minimal", count_mod(4), count_mod(4)),
    ("unreachable_states", MooreMachine([[0, 1], [1, 0], [3, 2], [0, 0]], [0, 1, 5, 7]),
     parity()),
    ("shuffled_parity_with_junk", permuted(parity(), 3, junk=4), parity()),
    ("partial_keeps_undefined", MooreMachine([[1, -1], [2, 0], [2, 0]], [0, 1, 1]), PARTIAL),
    ("partial_unreachable_only", MooreMachine([[0, 1], [1, 0], [-1, -1]], [0, 1, 0]),
     parity()),
    ("partial_all_undefined", MooreMachine([[-1, -1], [0, 0]], [3, 1]),
     MooreMachine([[-1, -1]], [0])),
    # initial state has parity's even successors but output 1: a don't-care
    ("initial_dont_care", MooreMachine([[1, 2], [1, 2], [2, 1]], [1, 0, 1]), parity()),
    # initial state fits no class: kept, its never-emitted output canonicalised to 0
    ("initial_kept_output_zeroed", MooreMachine([[1, 2], [1, 1], [2, 2]], [4, 0, 1]),
     MooreMachine([[1, 2], [1, 1], [2, 2]], [0, 0, 1])),
    # initial state not re-entered but with the successors of state 1: merged into it
    ("initial_joins_self_loop", MooreMachine([[1, 1], [1, 1]], [4, 1]),
     MooreMachine([[0, 0]], [1])),
    # re-entered initial state 1 with a twin (state 0, same successors, smaller output)
    ("reentered_initial_twin", MooreMachine([[2, 2], [2, 2], [0, 1]], [0, 1, 2], 1),
     MooreMachine([[1, 1], [0, 2], [1, 1]], [0, 2, 1])),
    ("single_symbol_cycle", MooreMachine([[1], [2], [3], [0]], [0, 1, 0, 1]),
     MooreMachine([[1], [0]], [0, 1])),
]


@pytest.mark.parametrize("m, expected", [c[1:] for c in MINIMIZE_CASES],
                         ids=[c[0] for c in MINIMIZE_CASES])
def test_minimize_known_cases(m, expected):
    got = m.minimize()
    assert got == expected, (got.transitions.tolist(), got.outputs.tolist(), got.initial)
    assert got.num_states == reference_num_states(m)
    assert got.is_equivalent(m) and m.is_equivalent(got)


def test_minimize_twin_initial_states_agree():
    # the same machine started in either twin: equivalent, so the same minimal form
    t, o = [[2, 2], [2, 2], [0, 1]], [0, 1, 2]
    a, b = MooreMachine(t, o, 0), MooreMachine(t, o, 1)
    assert a.is_equivalent(b)
    assert a.minimize() == b.minimize()


def test_partial_minimized_is_not_complete_and_counts_real_states():
    m = MooreMachine([[1, -1], [2, 0], [2, 0]], [0, 1, 1]).minimize()
    assert not m.is_complete and m.num_states == 2
    assert m.transitions[0, 1] == -1


# ----- minimize: random machines against the brute-force reference -----

RANDOM_SHAPES = [(1, 1, 1), (4, 2, 2), (6, 2, 2), (6, 2, 3), (4, 3, 2), (3, 3, 3)]
KINDS = ["plain", "fresh_init", "partial"]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n, a, n_outputs", RANDOM_SHAPES)
def test_minimize_random_against_reference(n, a, n_outputs, kind, seed):
    m = variant(kind, n, a, n_outputs, seed)
    mm = m.minimize()
    assert mm.num_states == reference_num_states(m)
    assert mm.is_complete == m.trim().is_complete
    words = all_words(a, m.num_states + mm.num_states)
    assert np.array_equal(emit(m, m.initial, words), emit(mm, mm.initial, words))
    assert mm.minimize() == mm  # idempotent
    # An isomorphic copy with unreachable junk, and a new don't-care output where allowed.
    other = permuted(m, seed, junk=2)
    if not initial_reentered(m):
        o = other.outputs.copy()
        o[other.initial] = (o[other.initial] + 1) % n_outputs
        other = MooreMachine(other.transitions, o, other.initial)
    assert other.minimize() == mm


@pytest.mark.parametrize("seed", range(6))
def test_minimize_equal_exactly_when_equivalent(seed):
    ms = [variant(k, n, 2, 2, seed) for k in KINDS for n in (2, 3)]
    ms += [m.minimize() for m in ms]
    for a, b in itertools.combinations(ms, 2):
        equivalent = reference_counterexample(a, b, a.num_states + b.num_states + 1) is None
        assert (a.minimize() == b.minimize()) == equivalent


def test_minimize_large_machine_is_equivalent():
    m = random_automaton(400, 3, 7, n_outputs=2)
    mm = m.minimize()
    assert mm.num_states <= 400 and m.is_equivalent(mm)
    words = np.random.default_rng(0).integers(0, 3, size=(64, 40))
    assert np.array_equal(m.run_batch(words), mm.run_batch(words))


# ----- counterexample / is_equivalent -----

ALWAYS0 = MooreMachine([[0, 0]], [0])
ALWAYS1 = MooreMachine([[0, 0]], [1])
PARTIAL_PARITY = MooreMachine([[0, 1], [1, -1]], [0, 1])

COUNTEREXAMPLE_CASES = [
    ("parity_self", parity(), parity(), None),
    ("parity_count_mod_2", parity(), count_mod(2), None),
    ("parity_duplicated", parity(), MINIMIZE_CASES[0][1], None),
    ("parity_count_mod_3", parity(), count_mod(3), [1, 1]),
    ("count_mod_3_vs_4", count_mod(3), count_mod(4), [1, 1, 1]),
    ("tie_smallest_first", parity(), ALWAYS1, [0]),
    ("tie_second_symbol", parity(), ALWAYS0, [1]),
    ("initial_output_ignored", parity(), MooreMachine([[1, 2], [1, 2], [2, 1]], [1, 0, 1]),
     None),
    ("partial_vs_complete", parity(), PARTIAL_PARITY, [1, 1]),
    ("complete_vs_partial", PARTIAL_PARITY, parity(), [1, 1]),
    ("both_undefined_same", PARTIAL_PARITY,
     MooreMachine([[2, 1], [1, -1], [2, 1]], [1, 1, 0]), None),
    ("completion_is_a_difference", PARTIAL_PARITY, PARTIAL_PARITY.complete(), [1, 1]),
    ("undefined_vs_fresh_output", MooreMachine([[-1]], [0]), MooreMachine([[0]], [1]), [0]),
]


@pytest.fixture(params=["bitmap", "set"])
def visited_store(request, monkeypatch):
    """Run counterexample with both stores of visited pairs (bitmap, or set for big ones)."""
    if request.param == "set":
        monkeypatch.setattr(moore, "_DENSE_PAIRS", 0)
    return request.param


@pytest.mark.parametrize("a, b, expected", [c[1:] for c in COUNTEREXAMPLE_CASES],
                         ids=[c[0] for c in COUNTEREXAMPLE_CASES])
def test_counterexample_known_cases(a, b, expected, visited_store):
    got = a.counterexample(b)
    if expected is None:
        assert got is None and a.is_equivalent(b)
    else:
        assert got.dtype == np.int64 and got.tolist() == expected
        assert not a.is_equivalent(b)


def pair(kind: str, n1: int, n2: int, a: int, seed: int):
    rng = np.random.default_rng(seed)
    m1 = variant("partial" if kind == "partial" else "plain", n1, a, 2, seed)
    if kind == "copy":
        return m1, permuted(m1, seed, junk=1)
    if kind == "tweak":  # one output or transition changed: sometimes still equivalent
        m2 = permuted(m1, seed)
        t, o = m2.transitions.copy(), m2.outputs.copy()
        s = rng.integers(m2.num_states)
        if rng.random() < 0.5:
            o[s] = 1 - o[s]
        else:
            t[s, rng.integers(a)] = rng.integers(m2.num_states)
        return m1, MooreMachine(t, o, m2.initial)
    return m1, variant(kind if kind == "partial" else "plain", n2, a, 2, seed + 500)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("kind", ["random", "copy", "tweak", "partial"])
@pytest.mark.parametrize("n1, n2, a", [(2, 3, 2), (4, 4, 2), (3, 2, 3), (6, 5, 2)])
def test_counterexample_random_against_brute_force(n1, n2, a, kind, seed, visited_store):
    m1, m2 = pair(kind, n1, n2, a, seed)
    bound = m1.num_states + m2.num_states + 1
    expected = reference_counterexample(m1, m2, bound)
    got = m1.counterexample(m2)
    if expected is None:
        assert got is None
        assert m1.is_equivalent(m2) and m2.is_equivalent(m1)
        return
    assert got is not None and got.tolist() == expected.tolist()
    # Outputs differ at the last step and nowhere before, via run on complete sides.
    e1, e2 = emit(m1, m1.initial, got[None]), emit(m2, m2.initial, got[None])
    assert e1[0, -1] != e2[0, -1] and np.array_equal(e1[0, :-1], e2[0, :-1])
    for m, e in ((m1, e1), (m2, e2)):
        if e[0, -1] >= 0:
            assert m.run(got)[-1] == e[0, -1]
        else:
            with pytest.raises(ValueError, match="undefined transition"):
                m.run(got)
    for k in range(1, len(got)):  # no shorter word distinguishes
        w = all_words(a, k)
        assert np.array_equal(emit(m1, m1.initial, w), emit(m2, m2.initial, w))
    assert m2.counterexample(m1).tolist() == got.tolist()  # symmetric


# ----- argument errors -----

BAD_CALLS = [
    ("counterexample_str", lambda: parity().counterexample("parity"), TypeError, "other"),
    ("is_equivalent_none", lambda: parity().is_equivalent(None), TypeError, "other"),
    ("alphabet_mismatch", lambda: parity().counterexample(MooreMachine([[0, 0, 0]], [0])),
     ValueError, "other"),
    ("dot_name", lambda: parity().to_dot(name=3), TypeError, "name"),
    ("dot_symbol_names_short", lambda: parity().to_dot(symbol_names=["a"]), ValueError,
     "symbol_names"),
    ("dot_symbol_names_long", lambda: parity().to_dot(symbol_names="abc"), TypeError,
     "symbol_names"),
    ("dot_output_names_short", lambda: count_mod(3).to_dot(output_names=["x", "y"]),
     ValueError, "output_names"),
    ("from_json_int", lambda: MooreMachine.from_json(3), TypeError, "text_or_path"),
    ("from_json_broken", lambda: MooreMachine.from_json("{not json"), ValueError,
     "text_or_path.*not valid JSON"),
    ("from_json_no_file", lambda: MooreMachine.from_json("/nonexistent/m.json"),
     FileNotFoundError, "text_or_path"),
    ("save_bad_path", lambda: parity().save(3), TypeError, "path"),
    ("load_bad_path", lambda: MooreMachine.load(None), TypeError, "path"),
    ("ragged_transitions", lambda: MooreMachine([[0, 1], [0]], [0, 1]), ValueError,
     "transitions"),
]


@pytest.mark.parametrize("call, exc, match", [c[1:] for c in BAD_CALLS],
                         ids=[c[0] for c in BAD_CALLS])
def test_bad_arguments_name_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ----- to_dot -----

EDGE = re.compile(r'^  s(\d+) -> s(\d+) \[label="([^"]*)"\];$')
NODE = re.compile(r'^  s(\d+) \[label="([^"]*)"\];$')

DOT_CASES = [parity(), count_mod(3), PARTIAL, MooreMachine([[1, 1, 0], [-1, 0, 0]], [2, 0], 1),
             random_automaton(6, 3, 4, n_outputs=3)]


def parse_dot(text: str):
    lines = text.strip().split("\n")
    assert re.fullmatch(r'digraph "[^"]*" \{', lines[0]) and lines[-1] == "}"
    assert text.count("{") == 1 and text.count("}") == 1
    nodes, edges, start = {}, {}, []
    for line in lines[1:-1]:
        assert line.endswith(";"), line
        if m := EDGE.match(line):
            key = (int(m[1]), int(m[2]))
            assert key not in edges, f"parallel edges not merged: {line}"
            edges[key] = m[3].split(", ")
        elif m := NODE.match(line):
            nodes[int(m[1])] = m[2]
        elif m := re.match(r"^  __start -> s(\d+);$", line):
            start.append(int(m[1]))
    return nodes, edges, start


@pytest.mark.parametrize("m", DOT_CASES)
def test_to_dot_has_every_defined_edge_once(m):
    text = m.to_dot()
    assert "__start [shape=point, style=invis" in text
    nodes, edges, start = parse_dot(text)
    assert start == [m.initial]
    assert nodes == {s: f"{s} / {o}" for s, o in enumerate(m.outputs.tolist())}
    got = {(src, int(sym), dst) for (src, dst), syms in edges.items() for sym in syms}
    want = {(s, a, int(d)) for (s, a), d in np.ndenumerate(m.transitions) if d >= 0}
    assert got == want


def test_to_dot_merges_parallel_edges_and_uses_names():
    m = MooreMachine([[1, 1, 0], [-1, 0, 0]], [2, 0], 1)
    text = m.to_dot("my machine", symbol_names=["a", "b", "c"],
                    output_names=["even", "odd", 'q"x'])
    assert text.startswith('digraph "my machine" {')
    nodes, edges, start = parse_dot(text.replace('\\"', "'"))
    assert nodes == {0: "0 / q'x", 1: "1 / even"}
    assert edges == {(0, 1): ["a", "b"], (0, 0): ["c"], (1, 0): ["b", "c"]}
    assert start == [1]


# ----- JSON -----

JSON_CASES = DOT_CASES + [MooreMachine([[0]], [0]), MooreMachine([[-1, -1]], [3])]


@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("m", JSON_CASES)
def test_json_round_trip(m, indent, tmp_path):
    text = m.to_json(indent=indent)
    d = json.loads(text)
    assert d["format"] == "grokfast.MooreMachine" and d["version"] == 1
    assert (d["num_states"], d["num_symbols"]) == (m.num_states, m.num_symbols)
    assert MooreMachine.from_json(text) == m
    assert MooreMachine.from_json("\n  " + text) == m
    path = tmp_path / "m.json"
    path.write_text(text)
    assert MooreMachine.from_json(path) == m and MooreMachine.from_json(str(path)) == m


@pytest.mark.parametrize("m", JSON_CASES)
def test_save_load_round_trip_replaces_atomically(m, tmp_path):
    path = tmp_path / "sub" / "machine.json"
    parity().save(path)
    m.save(str(path))  # overwrite through a str path
    assert MooreMachine.load(path) == m
    assert MooreMachine.load(str(path)) == m
    assert sorted(p.name for p in path.parent.iterdir()) == ["machine.json"]


def good_dict():
    return json.loads(count_mod(3).to_json())


def edited(**changes):
    d = good_dict()
    for k, v in changes.items():
        if v is KeyError:
            del d[k]
        else:
            d[k] = v
    return json.dumps(d)


BAD_JSON = [
    ("wrong_format", edited(format="something.else"), "format"),
    ("no_format", edited(format=KeyError), "format"),
    ("wrong_version", edited(version=2), "version"),
    ("missing_outputs", edited(outputs=KeyError), "missing key.*outputs"),
    ("num_states_mismatch", edited(num_states=4), "num_states"),
    ("float_transitions", edited(transitions=[[0.5, 1], [1, 2], [2, 0]]), "transitions"),
    ("ragged_transitions", edited(transitions=[[0, 1], [1], [2, 0]]), "transitions"),
    ("out_of_range_transition", edited(transitions=[[0, 1], [1, 2], [2, 3]]), "transitions"),
    ("outputs_length", edited(outputs=[0, 1]), "outputs"),
    ("initial_out_of_range", edited(initial=3), "initial"),
    ("initial_bool", edited(initial=True), "initial"),
    ("not_an_object", "[1, 2]", "JSON object"),
]


@pytest.mark.parametrize("text, match", [c[1:] for c in BAD_JSON], ids=[c[0] for c in BAD_JSON])
def test_from_json_rejects_malformed_content(text, match, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(text)
    for source in ([text] if text.startswith("{") else []) + [path]:
        with pytest.raises(ValueError, match=match) as info:
            MooreMachine.from_json(source)
        assert "text_or_path" in str(info.value)


def test_bad_file_via_load_names_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(edited(format="x"))
    with pytest.raises(ValueError, match=re.escape(str(path))):
        MooreMachine.load(path)
