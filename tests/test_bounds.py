"""Upper bounds: every duration and count in a spec (and every live knob) has one, documented in the
README; the bound itself is accepted — by rowfill, and by PostgreSQL and Airflow where the value ends
up — and anything above it is refused by `rowfill validate` with an error naming the field and the
bound. (DAG building with such a spec: tests/test_dags.py.)"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from sqlalchemy import text

from helpers import make_users, spec_for, write_spec
from rowfill.engine.control import BadKnob, parse_knob
from rowfill.engine.plan import plan_backfill
from rowfill.engine.runner import ChunkRunner
from rowfill.errors import SpecErrors
from rowfill.ops import cli
from rowfill.spec import bounds
from rowfill.spec.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
DURATIONS = {"chunk_time", "pause", "lock_timeout", "statement_timeout", "retry_delay", "max_retry_delay", "progress_every",
             "target_batch_time", "stall_after", "stall_repeat_after", "expected_duration"}
# Other fields a value at (or above) one bound needs to make the rest of the spec valid.
ALONG = {
    "batch_rows": {"chunk_rows": 2**31 - 1},
    "min_batch_rows": {"chunk_rows": 2**31 - 1, "batch_rows": 2**31 - 1},
    "stall_repeat_after": {"stall_after": "1h"},
}


def at_and_above(field: str) -> tuple:
    """(the bound as a spec writes it, the value it stands for, the smallest step above it as written)."""
    limit = bounds.FIELDS[field].limit
    if field in DURATIONS:
        ms = round(limit * 1000)
        return f"{ms}ms", ms / 1000, f"{ms + 1}ms"
    return int(limit), int(limit), int(limit) + 1


def spec_file(tmp_path, **fields) -> Path:
    return write_spec(tmp_path, name="bounded", **fields)


def problems(path: Path, field: str) -> list[str]:
    with pytest.raises(SpecErrors) as caught:
        load_spec(path)
    found = [e.problem for e in caught.value.errors if e.field == field]
    assert found, f"no error on {field!r}: {caught.value}"
    return found


@pytest.mark.parametrize("field", list(bounds.FIELDS))
def test_each_field_accepts_its_bound_and_refuses_one_step_above_naming_it(tmp_path, field):
    at, value, above = at_and_above(field)
    spec = load_spec(spec_file(tmp_path, **{**ALONG.get(field, {}), field: at}))
    assert getattr(spec, field) == pytest.approx(value, rel=1e-12, abs=0)

    shown = bounds.FIELDS[field].shown
    [problem] = problems(spec_file(tmp_path, **{**ALONG.get(field, {}), field: above}), field)
    assert problem.startswith(f"{above!r} is above the upper bound of {shown}: ")


@pytest.mark.parametrize("gates, at", [
    ({"replica_lag": {"wait": "{}"}}, "168h"),
    ({"long_transaction": {"critical": "{}"}}, "168h"),
    ({"active_backends": {"wait": "{}"}}, 262143),
    ({"lock_waiters": {"critical": "{}"}}, 262143),
    ({"probe": {"sql": "SELECT count(*) FROM jobs", "wait": "{}"}}, 2**53),
], ids=["replica_lag", "long_transaction", "active_backends", "lock_waiters", "probe"])
def test_gate_thresholds_have_bounds(tmp_path, gates, at):
    (name, body), = gates.items()
    which = "wait" if "wait" in body else "critical"
    above = "168.001h" if isinstance(at, str) else at + 1

    def with_value(v):
        return {name: {**body, which: v}}

    spec = load_spec(spec_file(tmp_path, gates=with_value(at)))
    assert getattr(spec.gates[name], which) == (168 * 3600 if isinstance(at, str) else at)
    [problem] = problems(spec_file(tmp_path, gates=with_value(above)), "gates")
    assert problem.startswith(f"{name}.{which}: {above!r} is above the upper bound of ")


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_threshold_that_is_not_a_finite_number_is_refused(tmp_path, value):
    """`.nan` would make the gate never hold (every comparison false); `.inf` cannot be stored as a knob."""
    path = spec_file(tmp_path, gates={"probe": {"sql": "SELECT 1", "wait": value}, "active_backends": {"critical": value}})
    [problem] = problems(path, "gates")
    assert "expected a number of at least 0" in problem


@pytest.mark.parametrize("key", ["limit", "every"])
def test_latency_probe_limit_and_every_have_bounds(tmp_path, key):
    probe = {"sql": "SELECT 1", "limit": "20ms"}
    spec = load_spec(spec_file(tmp_path, latency_probe={**probe, key: "1min"}))
    assert getattr(spec.latency_probe, key) == 60.0
    [problem] = problems(spec_file(tmp_path, latency_probe={**probe, key: "60001ms"}), "latency_probe")
    assert problem == f"{key}: '60001ms' is above the upper bound of 1min: {getattr(bounds, 'LATENCY_' + key.upper()).why}"


def test_a_webhook_timeout_has_a_bound(tmp_path):
    hook = {"connection": "rowfill_hook"}
    spec = load_spec(spec_file(tmp_path, alerts=[{"webhook": {**hook, "timeout": "5min"}}]))
    assert spec.alerts[0].options["timeout"] == 300.0
    [problem] = problems(spec_file(tmp_path, alerts=[{"webhook": {**hook, "timeout": "301s"}}]), "alerts")
    assert "timeout: '301s' is above the upper bound of 5min" in problem


@pytest.mark.parametrize("knob, at, above, bound", [
    ("pause", "24h", "24.5h", "24h"),
    ("batch_rows", str(2**31 - 1), str(2**31), "2147483647"),
    ("max_batch_rows", str(2**31 - 1), str(2**31), "2147483647"),
    ("target_batch_time", "1h", "3601s", "1h"),
    ("latency_limit", "1min", "61s", "1min"),
    ("replica_lag.wait", "168h", "169h", "168h (7 days)"),
    ("active_backends.critical", "262143", "262144", "262143"),
    ("probe.wait", str(2**53), "1e16", "9007199254740992 (2^53)"),
])
def test_live_knobs_have_the_bounds_of_their_fields(knob, at, above, bound):
    assert parse_knob(knob, at) == pytest.approx(float(at) if re.fullmatch(r"[\d.e]+", at) else
                                                 {"24h": 86400, "1h": 3600, "1min": 60, "168h": 604800}[at])
    with pytest.raises(BadKnob, match=re.escape(f"is above the upper bound of {bound}")):
        parse_knob(knob, above)


def test_a_knob_of_infinity_from_json_is_refused_not_a_crash():
    with pytest.raises(BadKnob, match="batch_rows"):
        parse_knob("batch_rows", math.inf)


def test_the_trigger_form_has_the_bounds_too(tmp_path):
    from rowfill.airflow.runparams import run_overrides, trigger_params

    spec = spec_for(tmp_path)
    assert trigger_params(spec)["batch_rows"].schema["maximum"] == 2**31 - 1
    assert run_overrides({"pause": "24h", "batch_rows": 2**31 - 1}, spec) == {"pause": 86400.0, "batch_rows": 2**31 - 1}
    with pytest.raises(ValueError, match=re.escape("'25h' is above the upper bound of 24h")):
        run_overrides({"pause": "25h"}, spec)


def test_postgresql_accepts_the_largest_timeouts(engine, db_url, tmp_path, capsys):
    """Each batch sets lock_timeout, statement_timeout and twice the latter as idle-in-transaction
    timeout (SET LOCAL); at the bounds PostgreSQL takes all three, in a run and in a dry run."""
    make_users(engine, 300)
    spec = spec_for(tmp_path, lock_timeout="2147483647ms", statement_timeout="1073741823ms", chunk_rows=200, batch_rows=50)
    assert cli.main(["--specs-dir", str(tmp_path), "--db", db_url, "plan", spec.name]) == 0
    assert "dry run: nothing was changed" in capsys.readouterr().out
    for chunk in plan_backfill(engine, spec):
        ChunkRunner(engine, spec).run(chunk.chunk_no)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users WHERE full_name = first_name || ' ' || last_name")).scalar() == 300


def test_rowfill_validate_names_the_field_and_the_bound(tmp_path, capsys):
    write_spec(tmp_path, name="fine", lock_timeout="2147483647ms")
    write_spec(tmp_path, name="too_big", lock_timeout="9999999h", pause="99999999999h", chunk_rows=2**63)
    assert cli.main(["--specs-dir", str(tmp_path), "validate"]) == 1
    out = capsys.readouterr().out
    assert "ok    fine" in out
    source = tmp_path / "too_big.yaml"
    assert (f"error {source}: field 'lock_timeout': '9999999h' is above the upper bound of 2147483647ms (about 24.8 days): "
            "PostgreSQL's largest timeout") in out
    assert f"error {source}: field 'pause': '99999999999h' is above the upper bound of 24h" in out
    assert f"error {source}: field 'chunk_rows': {2**63} is above the upper bound of 2147483647" in out


def test_the_readme_documents_every_bound():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("**Upper bounds.**"):readme.index("### SQL in a spec")]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    expected = [(f"`{name}`", b.shown) for name, b in bounds.FIELDS.items()]
    expected += [("`latency_probe.limit`", bounds.LATENCY_LIMIT.shown), ("`latency_probe.every`", bounds.LATENCY_EVERY.shown),
                 ("`replica_lag`", bounds.GATE_SECONDS.shown), ("`long_transaction`", bounds.GATE_SECONDS.shown),
                 ("`active_backends`", bounds.GATE_COUNT.shown), ("`lock_waiters`", bounds.GATE_COUNT.shown),
                 ("`probe`", bounds.PROBE_NUMBER.shown), ("webhook `timeout`", bounds.WEBHOOK_TIMEOUT.shown)]
    for name, shown in expected:
        assert any(name in row and f"| {shown} |" in row for row in rows), f"README has no bound {shown} for {name}"
