"""The baseline store: round trip, atomic writes, and clear errors for damaged files."""

import json

import pytest

from pytest_modelreg.baselines import SCHEMA_VERSION, Baseline, BaselineStore, atomic_write
from pytest_modelreg.errors import BaselineError
from pytest_modelreg.results import SampleOutcome


def sample_baseline(name="piqa_local"):
    samples = [SampleOutcome(i, f"d{i}", f"p{i}", f"t{i}", {"acc": float(i % 2)}) for i in range(4)]
    return Baseline(name=name, task="piqa_local",
                    metrics={"acc": {"value": 0.5, "stderr": 0.25, "higher_is_better": True}},
                    fingerprint={"limit": 4, "docs": "abc"}, n_samples=4,
                    provenance={"model": {"sha256": "ff"}}, samples=samples)


def test_round_trip(tmp_path):
    store = BaselineStore(tmp_path)
    path = store.save(sample_baseline())
    assert path == tmp_path / "piqa_local.json"
    loaded = store.load("piqa_local")
    assert loaded.value("acc") == 0.5
    assert loaded.fingerprint == {"limit": 4, "docs": "abc"}
    assert loaded.samples == sample_baseline().samples
    # Readable and diffable: indented JSON, one line per doc.
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION
    assert len((tmp_path / "piqa_local.samples.jsonl").read_text().splitlines()) == 4
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_is_none(tmp_path):
    assert BaselineStore(tmp_path).load("nothing") is None


@pytest.mark.parametrize("content", ["{", "", "[]", '{"schema_version": 1}', "\x00\x01"])
def test_corrupt_json_names_the_file(tmp_path, content):
    (tmp_path / "x.json").write_text(content)
    with pytest.raises(BaselineError, match=r"x\.json is corrupt.*--modelreg-update"):
        BaselineStore(tmp_path).load("x")


def test_truncated_samples_file_is_corrupt_not_empty(tmp_path):
    store = BaselineStore(tmp_path)
    store.save(sample_baseline())
    samples = tmp_path / "piqa_local.samples.jsonl"
    samples.write_text(samples.read_text()[:30])
    with pytest.raises(BaselineError, match="does not match"):
        store.load("piqa_local")
    samples.unlink()
    with pytest.raises(BaselineError, match="missing"):
        store.load("piqa_local")


def test_newer_schema_names_both_versions(tmp_path):
    store = BaselineStore(tmp_path)
    path = store.save(sample_baseline())
    data = json.loads(path.read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps(data))
    with pytest.raises(BaselineError, match=f"schema version {SCHEMA_VERSION + 1}.*"
                                            f"\\({SCHEMA_VERSION}\\).*upgrade"):
        store.load("piqa_local")


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "b.json"
    atomic_write(target, "old")

    with pytest.raises(TypeError):
        atomic_write(target, 42)  # type: ignore[arg-type]  # fails mid-write
    assert target.read_text() == "old"
    assert not list(tmp_path.glob("*.tmp"))


def test_names_become_safe_file_names(tmp_path):
    store = BaselineStore(tmp_path)
    assert store.json_path("mmlu/abstract algebra").name == "mmlu_abstract_algebra.json"


def test_fingerprint_fields_the_baseline_never_recorded_are_no_difference():
    from pytest_modelreg.fingerprint import diff_fingerprints

    imported = {"limit": 30, "num_fewshot": 0}  # aggregates only: no doc hashes to compare
    current = {"limit": 30, "num_fewshot": 0, "docs": "ab12", "prompts": "cd34"}
    assert diff_fingerprints(imported, current) == []
    assert diff_fingerprints({**imported, "docs": "ff00"}, current) == ["doc set: ff00 -> ab12"]
    assert diff_fingerprints(imported, {**current, "limit": 60}) == ["limit: 30 -> 60"]
