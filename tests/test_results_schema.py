"""One record schema, one reader: ``docs/results-schema.md`` documents exactly the field
names ``profiling.results`` defines, the writer makes records with exactly those fields,
the kept records use no others, and the one reader (files in order, a torn line skipped,
the last record of a key kept) is what the simulator's validation and the plots read."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from experiments import records as rows_view
from profiling import results
from profiling.point import PointConfig
from simulator import validate

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "results-schema.md").read_text()
KEPT = sorted((ROOT / "experiments" / "results").rglob("*.jsonl"))


def _section(title: str) -> str:
    """The text under ``## title`` up to the next ``## ``."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", DOC, re.S | re.M)
    assert match, f"no section {title!r} in docs/results-schema.md"
    return match.group(1)


def _table_fields(title: str) -> list[str]:
    """The backticked names in the first column of the section's table."""
    names = []
    for line in _section(title).splitlines():
        if line.startswith("| `"):
            names += re.findall(r"`([^`]+)`", line.split("|")[1])
    return names


@pytest.mark.parametrize(
    ("title", "fields"),
    [
        ("Top level", results.RECORD_FIELDS),
        ("`config`", results.CONFIG_FIELDS),
        ("`env`", results.ENV_FIELDS),
        ("`topology`", results.TOPOLOGY_FIELDS),
        ("`measured`", results.MEASURED_FIELDS),
    ],
)
def test_doc_tables_list_exactly_the_schema(title, fields):
    documented = _table_fields(title)
    assert len(documented) == len(set(documented)), f"{title}: a field documented twice"
    assert set(documented) == set(fields), (
        f"{title}: undocumented {sorted(set(fields) - set(documented))}, "
        f"not in the schema {sorted(set(documented) - set(fields))}"
    )


def test_doc_example_has_the_schema_fields():
    (example,) = re.findall(r"```json\n(.*?)```", DOC, re.S)
    record = json.loads(example)
    assert tuple(record) == results.RECORD_FIELDS
    assert set(record["config"]) == set(results.CONFIG_FIELDS)
    assert set(record["env"]) == set(results.ENV_FIELDS)
    assert set(record["topology"]) == set(results.TOPOLOGY_FIELDS)
    assert set(record["measured"]) <= set(results.MEASURED_FIELDS)


def test_writer_makes_records_of_the_schema(tmp_path):
    config = PointConfig(method="sigmoid-ring", world=2, batch=8, dim=4).as_dict()
    env = results.environment("gloo", "cpu")
    assert tuple(env) == results.ENV_FIELDS[: len(env)]  # worker_point: the runner's
    record = results.make_record(config, "ok", None, {"comm_ops": {}}, env)
    assert tuple(record) == results.RECORD_FIELDS
    assert tuple(record["config"]) == results.CONFIG_FIELDS
    assert tuple(record["topology"]) == results.TOPOLOGY_FIELDS
    path = tmp_path / "r.jsonl"
    results.append_record(path, record)
    assert results.read_records(path) == [record]


EXTRA_RECORD_FIELDS = {"part", "skipped", "noise_launch"}
"""Fields one writer adds for itself (docs/results-schema.md names them): the GPU check's
part and skipped, the noise floor's launch number."""


@pytest.mark.parametrize("path", KEPT, ids=lambda p: str(p.relative_to(ROOT)))
def test_kept_records_use_only_schema_fields(path):
    for record in results.read_records(path, must_exist=True):
        if "config" not in record:  # a peer-ratios line or a GPU correctness line
            continue
        assert set(record) <= set(results.RECORD_FIELDS) | EXTRA_RECORD_FIELDS
        assert set(record["env"]) <= set(results.ENV_FIELDS) | {"open_clip"}
        if record["config"].get("benchmark") == "peers":  # not one method's point: below
            continue
        assert set(record["config"]) <= set(results.CONFIG_FIELDS)
        assert set(record.get("measured") or {}) <= set(results.MEASURED_FIELDS)


def _record(key: str, status: str, world: int, emulate: str | None = None) -> dict:
    config = PointConfig(method="sigmoid-ring", world=world, batch=8, dim=4, emulate=emulate)
    return {"key": key, "status": status, "config": config.as_dict(), "measured": None}


def test_one_reader_order_torn_lines_and_last_record_of_a_key(tmp_path, capsys):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text(
        json.dumps(_record("k1", "timeout", 2)) + "\n{torn\n" + json.dumps(_record("k2", "ok", 4))
    )
    second.write_text(json.dumps(_record("k1", "ok", 2)) + "\n")
    everything = results.read_records([first, second])
    assert [(r["key"], r["status"]) for r in everything] == [
        ("k1", "timeout"),
        ("k2", "ok"),
        ("k1", "ok"),
    ]
    assert "a.jsonl:2: skipping an unreadable line" in capsys.readouterr().err
    kept = results.latest(everything)
    assert [(r["key"], r["status"]) for r in kept] == [("k1", "ok"), ("k2", "ok")]
    assert results.read_records(tmp_path / "none.jsonl") == []
    with pytest.raises(ValueError, match=r"cannot read results .*none\.jsonl: no such file"):
        results.read_records([first, tmp_path / "none.jsonl"], must_exist=True)
    assert rows_view.latest is results.latest and rows_view.read_records is results.read_records
    assert not hasattr(validate, "read_records") or validate.read_records is results.read_records


def test_emulated_is_read_from_config_emulate():
    measured = {"step_time_s": {"median": 1.0}, "bytes_sent": 8, "peak_live_bytes": 4}
    real = {**_record("a", "ok", 2), "measured": measured}
    emulated = {**_record("b", "ok", 64, emulate="stand-in"), "measured": measured}
    assert [r.emulated for r in rows_view.rows([real, emulated])] == [False, True]


def test_points_measured_before_a_new_option_keep_their_key():
    """A run directory kept before ``hide_accumulator`` existed resumes without measuring
    its points again: the option at its default is not part of the key."""
    from profiling.results import KEY_OMITS_AT_DEFAULT, point_key

    kept = Path(__file__).resolve().parents[1] / "experiments/results/xeon2-default-run-pooled"
    records = [json.loads(line) for line in (kept / "results.jsonl").read_text().splitlines()]
    assert records and all("hide_accumulator" not in r["config"] for r in records)
    for record in records:
        today = record["config"] | dict(KEY_OMITS_AT_DEFAULT)
        assert point_key(today) == record["key"]
        assert point_key(today | {"hide_accumulator": True}) != record["key"]
