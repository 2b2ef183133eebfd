"""Every benchmark results file follows the one flat row schema of benchmarks/_harness.py, and the
harness refuses (and writes nothing for) a malformed row."""
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import _harness  # noqa: E402

RESULTS = sorted((BENCHMARKS / "results").glob("*.json"))


def _row(**overrides):
    r = _harness.row("perturb", "mmxai_fast.perturb", "B=2 4x8^3", device="cpu", dtype="float32", median_s=0.5,
                     iqr_s=0.1, ratio=None, gbps=3.0)
    r.update(overrides)
    return r


def test_there_are_results():
    assert len(RESULTS) >= 10


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_results_file_follows_the_schema(path):
    payload = json.loads(path.read_text())
    _harness.check_results(payload, path.name)
    assert payload["rows"], "a results file holds at least one row"
    for r in payload["rows"]:
        assert tuple(r)[:len(_harness.ROW_FIELDS)] == _harness.ROW_FIELDS
        assert r["device"] in ("cpu", "cuda")
        assert r["median_s"] is not None or r["iqr_s"] is None  # no spread without a time


def test_row_puts_the_fields_first_and_extras_after():
    r = _row()
    assert list(r) == list(_harness.ROW_FIELDS) + ["gbps"]
    assert r["versions"]["torch"] and r["commit"]


@pytest.mark.parametrize("field", _harness.ROW_FIELDS)
def test_write_results_rejects_a_row_missing_a_field(tmp_path, field):
    bad = _row()
    del bad[field]
    out = tmp_path / "results.json"
    with pytest.raises(ValueError, match=rf"rows\[1\] must start with the fields .*missing \['{field}'\]"):
        _harness.write_results(out, [_row(), bad], {"command": "test"})
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing written, no temp file left


@pytest.mark.parametrize("field,value,match", [
    ("median_s", "fast", r"\['median_s'\] must be a number >= 0 or null, got 'fast'"),
    ("ratio", -1.0, r"\['ratio'\] must be a number >= 0 or null, got -1.0"),
    ("iqr_s", True, r"\['iqr_s'\] must be a number >= 0 or null, got True"),
    ("op", "", r"\['op'\] must be a non-empty str, got ''"),
    ("versions", {}, r"\['versions'\] must be a dict with 'torch', got \{\}"),
])
def test_write_results_rejects_bad_values(tmp_path, field, value, match):
    out = tmp_path / "results.json"
    with pytest.raises(ValueError, match=match):
        _harness.write_results(out, [_row(**{field: value})], {})
    assert not out.exists()


def test_write_results_round_trip(tmp_path):
    out = tmp_path / "results.json"
    rows = [_row(), _row(impl="captum", ratio=2.5)]
    payload = _harness.write_results(out, rows, {"cpu": _harness.cpu_facts([1.0, 1.0, 1.0])})
    assert json.loads(out.read_text()) == json.loads(json.dumps(payload))
    facts = payload["meta"]["cpu"]
    assert facts["loadavg_before"] == [1.0, 1.0, 1.0] and len(facts["loadavg_after"]) == 3
    assert set(facts["isa"]) >= {"avx2", "avx512f", "fma"} and facts["threads"] >= 1


def test_as_row_maps_the_older_measure_rows():
    old = dict(case="c", impl="captum", median_s=2.0, min_s=1.0, max_s=3.0, iqr_s=0.5, repeats=5, speedup=4.0)
    r = _harness.as_row(old, "perturb", device="cpu", dtype="float32")
    assert (r["median_s"], r["iqr_s"], r["ratio"], r["min_s"]) == (2.0, 0.5, 4.0, 1.0) and "speedup" not in r
    one = _harness.as_row(dict(old, repeats=1, iqr_s=0.0), "perturb", device="cpu", dtype="float32")
    assert one["iqr_s"] is None  # one run: no spread measured
