"""The inventory's YAML loader builds plain documents from the parser's events (agent/inventory/
register.py, load_yaml): whatever the document, it must give exactly what PyYAML's safe loader
gives -- the same values of the same types in the same order, or the same error."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import InventoryError
from agent.inventory.register import load_inventory, load_yaml

SAFE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def strict(value):
    """A value with every type spelled out: 1, 1.0 and True are equal in Python, not here."""
    if isinstance(value, dict):
        return ("dict", [(strict(k), strict(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [strict(v) for v in value])
    return (type(value).__name__, repr(value))


def outcome(load, text: str):
    try:
        return ("value", strict(load(text)))
    except (yaml.YAMLError, KeyError) as exc:
        return ("error", type(exc).__name__, str(exc))


def pyyaml(text: str):
    try:
        return yaml.load(text, Loader=SAFE)
    except ValueError as exc:  # 2024-02-30: load_yaml says it as a YAML error, which callers report
        raise yaml.constructor.ConstructorError(problem=str(exc)) from None


def same_as_pyyaml(text: str) -> None:
    assert outcome(load_yaml, text) == outcome(pyyaml, text), text


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12),
    st.dates(), st.datetimes(timezones=st.just(timezone.utc)),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.text(max_size=8), st.integers(), st.booleans()), inner,
                                            max_size=4)),
    max_leaves=20,
)


@given(documents, st.booleans(), st.booleans())
@settings(max_examples=300, deadline=None)
def test_any_document_pyyaml_writes_loads_to_the_same_values(data, flow, sort_keys):
    same_as_pyyaml(yaml.safe_dump(data, default_flow_style=flow, sort_keys=sort_keys, allow_unicode=True))


# Plain scalars that YAML 1.1 resolves to something other than a string, and near misses.
TOKENS = ["yes", "No", "on", "OFF", "~", "null", "", "0x1F", "0o17", "017", "1_000", "+12", "-0", "1e3", "1.5e-3",
          ".inf", "-.Inf", ".nan", "2024-02-29", "2024-2-3", "2024-02-30", "2024-01-01T10:00:00Z",
          "2024-01-01 10:00:00.5 +02:00", "12:30:45", "190:20:30", "=", "<<", "!", "'quoted'", '"2024-01-01"',
          "true", "True", "TRUE", "tRuE", "0b101", "1,000", "3.", ".5", "-", "a: b", "[x]", "{a: 1}", "#c", "&a x",
          "*a"]


@given(st.lists(st.tuples(st.sampled_from(TOKENS), st.sampled_from(TOKENS)), min_size=1, max_size=5),
       st.sampled_from(["{k}: {v}\n", "- {v}\n", "- {k}: {v}\n", "{k}:\n  - {v}\n"]))
@settings(max_examples=400, deadline=None)
def test_tricky_plain_scalars_resolve_and_fail_as_pyyaml(pairs, line):
    same_as_pyyaml("".join(line.format(k=k, v=v) for k, v in pairs))


@pytest.mark.parametrize("text", [
    "",  # empty
    "# only a comment\n",
    "---\n...\n",
    "a: 1\n---\nb: 2\n",  # two documents: PyYAML's error
    "base: &b {product: rds, version: '2022'}\nuse: *b\n",  # anchor and alias
    "base: &b {a: 1}\nm:\n  <<: *b\n  c: 2\n",  # merge key
    "m:\n  <<: {a: 1}\n  c: 2\n",  # a merge key without an alias
    "a: !!str 123\nb: !!int '7'\nc: !!binary aGk=\n",  # explicit tags
    "a: !custom x\n",  # an unknown tag: PyYAML's error
    "? [a, b]\n: c\n",  # an unhashable key: PyYAML's error
    "=: value\n",  # the value key of YAML 1.1
    "a: 1\na: 2\n",  # a duplicate key: the last one wins, as in PyYAML
    "a: [1, 2\n",  # not YAML
    "a:\n\tb: 1\n",  # a tab
    "purchases:\n- id: PO-1\n  quantity: 10\n  purchased_on: 2024-01-17\n  expires_on: '2027-01-01'\n",
    "- - - deep\n    - [x, {y: [z, ~]}]\n",
    # PyYAML's bool constructor raises KeyError for these; a later error in the document comes first
    'a: ! "true\\n"\n---\nb: 1\n',
    'a: ! "true\\n"\nb: [\n',
    '- ! "true\\n"\n- *x\n',
    "a: 'multi\n  line'\nb: >\n  folded\n  text\nc: |\n  literal\n",
])
def test_documents_left_to_pyyaml_or_not_load_the_same(text):
    same_as_pyyaml(text)


def test_an_inventory_loads_with_its_types():
    data = load_yaml("assignments:\n- purchase: PO-1\n  principal: jdoe\n  assigned_on: 2024-02-01\n"
                     "- {purchase: PO-1, principal: '007', assigned_on: '2024-02-01', seats: 2, kiosk: yes}\n")
    assert data == {"assignments": [
        {"purchase": "PO-1", "principal": "jdoe", "assigned_on": date(2024, 2, 1)},
        {"purchase": "PO-1", "principal": "007", "assigned_on": "2024-02-01", "seats": 2, "kiosk": True},
    ]}
    assert isinstance(load_yaml("t: 2024-01-01 10:00:00Z\n")["t"], datetime)


def test_an_impossible_date_is_an_inventory_error_not_a_traceback(tmp_path):
    path = tmp_path / "inventory.yaml"
    path.write_text("purchases:\n- id: P\n  product: windows-server\n  version: '2022'\n  cal_type: user\n"
                    "  quantity: 1\n  purchased_on: 2024-02-30\n")
    with pytest.raises(InventoryError, match="not valid YAML: day is out of range for month"):
        load_inventory(path)
