"""The C decoder (features._fastnorm) against msgspec's block path on damaged realistic lines, its
Arrow arrays validated in full; ``make fuzz`` runs the same check far longer on a sanitizer build."""
from __future__ import annotations

import hashlib
import json
import types
from pathlib import Path

import pytest

import features.events as events_module
from features.events import NATIVE_SOURCES, BadEvent, native_build_matches, normalize_event, synthetic_audit_id
from tests.factory import event
from tests.features.native_fuzz import differential, mutated_lines, seed_lines


def native():
    if events_module._fastnorm is None:
        pytest.fail("features._fastnorm is not built: install with a C compiler (setup.py)")
    return events_module._fastnorm


def test_the_built_decoder_is_the_checkout_s_and_a_build_from_other_sources_is_refused():
    """A checkout whose fastnorm.c changed after `make install` keeps the old .so: it would decode by yesterday's rules, so
    the archive stage refuses it (the digest setup.py compiles in, against the sources beside it)."""
    folder = Path(events_module.__file__).parent / "_native"
    assert native_build_matches(native(), [(folder / name).read_bytes() for name in NATIVE_SOURCES]), "run make install"
    built = types.SimpleNamespace(SOURCE_SHA256=hashlib.sha256(b"int version = 1;").hexdigest())
    assert native_build_matches(built, [b"int version = 1;", b""])
    assert not native_build_matches(built, [b"int version = 2;", b""])
    assert native_build_matches(types.SimpleNamespace(), [b"int version = 2;"]), "a build outside setup.py (make fuzz) has no digest"
    assert native_build_matches(built, None), "an installed wheel has no sources to compare"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_damaged_lines_end_up_the_same_with_either_decoder(tmp_path, seed):
    assert differential(mutated_lines(1500, seed), native(), tmp_path) > 75


def test_a_status_code_beyond_64_bits_next_to_a_number_beyond_a_double_is_archived_alike(tmp_path):
    """Seeds 2 and 3 of the differential, on an exported record without a verb (as the shared EKS fixtures): both numbers
    are valid JSON and msgspec's block path took the line (its int holds any integer; the unread number is skipped),
    while the C decoder left it over the code, and the per-line path (orjson refuses the infinity; salvage needs a
    verb) quarantined it as invalid_json."""
    from tests.features.native_fuzz import archived

    raw = event(responseStatus={"code": 7777})
    del raw["verb"]
    line = json.dumps(raw)[:-1].replace("7777", "18446744073709551616") + ', "n": 1e400}'
    path = tmp_path / "in.jsonl"
    path.write_text(line + "\n")
    ours, theirs = archived(path, native()), archived(path, None)
    assert ours[1:] == theirs[1:] == ({}, [], {})
    assert ours[0].equals(theirs[0])
    row = ours[0].to_pylist()[0]
    assert (row["audit_id"], row["code"], row["salvage"]) == (raw["auditID"], None, None)


def test_the_line_seed_1000_found_is_archived_alike(tmp_path):
    """``python -m tests.features.native_fuzz --count 100000 --seed 1000``, block 90,000, line 2,195: a shared EKS
    fixture (no verb) with its auditID duplicated and ``"n": -1e400`` appended. msgspec's block path took it; the C
    decoder left it over the duplicate, and the per-line path (orjson refuses the infinity; salvage needs a verb)
    quarantined it as invalid_json. Only an unread field is damaged, so it is now archived as a whole line is."""
    line = mutated_lines(5000, 91000)[2195]
    assert line.count(b'"auditID"') == 2 and b"1e400" in line and b'"verb"' not in line
    assert differential([line], native(), tmp_path) == 0


def test_well_formed_lines_are_all_taken_and_their_arrays_validate(tmp_path):
    lines = seed_lines()
    assert differential(lines, native(), tmp_path) >= 12  # the factory's lines; many fixtures carry bodies rules read


def deep(levels: int) -> dict:
    return json.loads('{"a":' * levels + "1" + "}" * levels)


def test_an_event_without_audit_id_nested_deeper_than_orjson_writes_gets_a_stable_id():
    """kube-apiserver logs a body as the client sent it; without an auditID the event's id is a hash of it, and a
    body 300 levels deep made orjson.dumps raise TypeError, which aborted the whole archive run."""
    raw = event(verb="patch", objectRef={"resource": "leases", "namespace": "web", "name": "l"}, requestObject=deep(300))
    del raw["auditID"]
    row = normalize_event(raw)
    assert row["audit_id"].startswith("sha256-") and row["audit_id"] == synthetic_audit_id(json.loads(json.dumps(raw)))
    other = json.loads(json.dumps(raw))
    other["requestObject"] = deep(301)
    assert normalize_event(other)["audit_id"] != row["audit_id"]


def test_an_event_that_is_not_an_object_is_still_a_bad_event():
    with pytest.raises(BadEvent, match="not_an_object"):
        normalize_event([deep(300)])


def test_a_quarantined_object_nested_a_thousand_deep_does_not_abort_the_archive(tmp_path):
    from tests.features.native_fuzz import archived

    pod = json.dumps({**event(), "kind": "Pod"})[:-1] + ', "spec": ' + '{"a":' * 1000 + "1" + "}" * 1000 + "}"
    path = tmp_path / "in.jsonl"
    path.write_text(pod + "\n" + json.dumps(event()) + "\n")
    result = archived(path, None)
    assert len(result[0]) == 1 and result[1] == {"not_an_audit_event": 1}


def test_a_column_the_decoder_built_wrong_stops_the_run_in_one_line(monkeypatch):
    """Bytes that are not UTF-8 in a string column (pyarrow's cheap checks at construction pass them) are refused
    before anything reads them."""
    real = native()

    class Corrupting:
        @staticmethod
        def normalize(lines, body_resources):
            positions, missing, strings, groups, code, truncated = real.normalize(lines, body_resources)
            validity, offsets, data, nulls = strings["user_agent"]
            strings["user_agent"] = (validity, offsets, b"\xff" + data[1:], nulls)
            return positions, missing, strings, groups, code, truncated

    monkeypatch.setattr(events_module, "_fastnorm", Corrupting)
    with pytest.raises(RuntimeError, match=r"features._fastnorm built an invalid user_agent column .*AUDITSIFT_NO_NATIVE=1"):
        events_module.normalize_json_lines([json.dumps(event()).encode()])
