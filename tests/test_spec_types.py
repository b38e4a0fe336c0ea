"""The spec's nested fields arrive as small frozen value types, never as raw YAML mappings or lists,
and no field of ``Spec`` is declared as a bare ``Any``, ``dict`` or ``tuple``."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from helpers import spec_for
from rowfill.spec.alert_targets import AlertTarget
from rowfill.spec.gates import GateSpec, LatencySpec
from rowfill.spec.spec import Spec
from rowfill.spec.windows import Window


def test_no_spec_field_is_declared_untyped():
    hints = typing.get_type_hints(Spec)
    loose = [f.name for f in dataclasses.fields(Spec) if hints[f.name] in (typing.Any, dict, tuple, list)]
    assert loose == []


def test_nested_fields_are_frozen_value_types(tmp_path):
    spec = spec_for(tmp_path, gates={"replica_lag": {"wait": "10s", "critical": "5min"}, "lock_waiters": 5},
                    latency_probe={"sql": "SELECT 1", "limit": "20ms"},
                    window={"start": "01:00", "end": "06:00", "timezone": "Europe/Berlin"},
                    alerts=[{"webhook": {"connection": "rowfill_hook"}}])
    assert all(isinstance(g, GateSpec) for g in spec.gates.values())
    assert spec.gates["replica_lag"].wait == 10.0 and spec.gates["replica_lag"].critical == 300.0
    assert isinstance(spec.latency_probe, LatencySpec) and spec.latency_probe.limit == 0.02
    assert [type(w) for w in spec.window] == [Window]
    assert [type(a) for a in spec.alerts] == [AlertTarget]
    for value in (spec.gates["lock_waiters"], spec.latency_probe, spec.window[0], spec.alerts[0]):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, dataclasses.fields(value)[0].name, None)
