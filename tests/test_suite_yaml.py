"""Suites without Python: ``modelreg*.yaml`` files collected as tests, one item per task."""

from __future__ import annotations

import pytest

from tests.conftest import TinyWorld, dedent

SUITE = dedent("""
    # two tasks of the tiny world, checked against their baselines
    tasks:
      - name: tiny_qa
        metrics:
          - name: acc
      - name: tiny_qa2
        limit: 20
        metrics: [acc]
""")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", *args)


def vllm_config(model: object, value: float, extra: str = "") -> str:
    """A config as vLLM's own lm-eval CI writes them (acc,none: lm-eval's full metric key)."""
    return dedent(f"""
        model_name: "{model}"
        tasks:
        - name: "tiny_qa"
          metrics:
          - name: "acc,none"
            value: {value}
        limit: 60
        num_fewshot: 0
    """) + extra


def test_suite_records_passes_selects_and_catches_a_regression(project: pytest.Pytester,
                                                                 tiny: TinyWorld):
    project.makefile(".yaml", modelreg_smoke=SUITE)
    listed = run(project, "--collect-only", "-q")
    listed.stdout.fnmatch_lines(["modelreg_smoke.yaml::tiny_qa", "modelreg_smoke.yaml::tiny_qa2"])

    first = run(project, "modelreg_smoke.yaml::tiny_qa")  # no baseline yet: says how to record
    first.assert_outcomes(failed=1)
    first.stdout.fnmatch_lines(["modelreg: tiny_qa: no baseline for tiny_qa/acc; record it with "
                                "pytest --modelreg-update modelreg_smoke.yaml::tiny_qa"])
    run(project, "--modelreg-update", "modelreg_smoke.yaml::tiny_qa").assert_outcomes(passed=1)
    both = run(project, "--modelreg-record-missing")  # compares tiny_qa, records tiny_qa2
    both.assert_outcomes(passed=2)
    both.stdout.fnmatch_lines(["*modelreg_smoke.yaml::tiny_qa *tiny_qa *acc*1.0000*pass",
                               "*modelreg_smoke.yaml::tiny_qa2*tiny_qa2*acc*1.0000*recorded"])
    assert sorted(p.name for p in (project.path / "baselines").glob("*.json")) == \
        ["tiny_qa.json", "tiny_qa2.json"]

    selected = run(project, "-k", "tiny_qa2")
    selected.assert_outcomes(passed=1, deselected=1)
    selected.stdout.fnmatch_lines(["*modelreg_smoke.yaml::tiny_qa2*tiny_qa2*acc*1.0000*pass"])

    project.makefile(".ini", pytest=tiny.ini(tiny.degraded))
    worse = run(project)
    assert worse.parseoutcomes()["failed"] >= 1
    worse.stdout.fnmatch_lines(["*_ modelreg suite: tiny_qa _*",
                                "modelreg: tiny_qa: acc fell from 1.0000 to *",
                                "*modelreg_smoke.yaml::tiny_qa *tiny_qa *acc*regressed*"])


def test_thresholds_and_gpu_requirements(project: pytest.Pytester):
    project.makefile(".yaml", modelreg_bounds=dedent("""
        min: 0.5                  # every metric of every task, unless it sets its own
        tasks:
          - name: tiny_qa
            limit: 20
            metrics:
              acc: {min: 1.01}
              acc_norm:
          - name: tiny_qa2
            limit: 20
          - name: tiny_qa2
            baseline: tiny_qa2_big_gpu
            min_gpu_memory: 100000GB
    """))
    result = run(project, "--modelreg-record-missing", "-rs")
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    result.stdout.fnmatch_lines([
        "modelreg: tiny_qa: acc = 1.0000, expected >= 1.0100 (missed by 0.0100)",
        "*modelreg_bounds.yaml::tiny_qa *tiny_qa*acc *out of bounds*",
        "SKIPPED * modelreg: needs a*",
    ])


def test_vllm_config_value_and_rtol(project: pytest.Pytester, tiny: TinyWorld):
    # The ini names model type hf, so vLLM's model_name is loaded with hf; acc is 0.6333 here.
    project.makefile(".yaml", modelreg_vllm_far=vllm_config(tiny.degraded, 0.9))
    project.makefile(".yaml", modelreg_vllm_close=vllm_config(tiny.degraded, 0.65, "rtol: 0.05\n"))
    project.makefile(".yaml", modelreg_vllm_below=vllm_config(tiny.degraded, 0.3))
    result = run(project, "--modelreg-record-missing")
    result.assert_outcomes(passed=2, failed=1)  # far: 0.6333 < 0.9 * 0.92; close: >= 0.65 * 0.95
    result.stdout.fnmatch_lines([
        "modelreg: tiny_qa: acc = 0.6333, expected >= 0.8280 (missed by 0.1947)",
        "*tiny_qa/acc: vLLM config value 0.9 with rtol 0.08: passes at >= 0.8280*",
        "*modelreg_vllm_far.yaml::tiny_qa*tiny_qa*acc*out of bounds*",
    ])
    out = result.stdout.str()
    assert out.count("modelreg: evaluated tiny_qa") == 1  # one evaluation for the three files
    recorded = [p.name for p in (project.path / "baselines").glob("*.json")]
    assert len(recorded) == 1 and recorded[0].startswith("tiny_qa--hf-")  # the model's own


@pytest.mark.parametrize(("text", "message"), [
    ("tasks:\n  - name: tiny_qa\n    limit: [1, 2\n  - name: tiny_qa2\n",
     "4: not valid YAML: expected ',' or ']', but got ':' (while parsing a flow sequence "
     "started on line 3)"),
    ("tasks:\n  - name: tiny_qa\n    metrics: acc: 3\n",
     "3: not valid YAML: mapping values are not allowed here"),
    ("tasks:\n  - name: tiny_qa\n    lmit: 5\n",
     "3: unknown key 'lmit' in task 'tiny_qa' (did you mean 'limit'?)"),
    ("tasks:\n  - name: tiny_qa\n    limit: lots\n",
     "3: limit: expected a positive number of docs, got 'lots'"),
    ("model: hf\nlimit: 5\n", "1: no tasks: list; *"),
    ("tasks:\n  - name: tiny_qa\n    metrics:\n      - min: 0.5\n",
     "4: a metric of task 'tiny_qa' has no name:"),
    ("tasks:\n  - name: tiny_qa\n    metrics:\n      - name: acc\n        min: high\n",
     "4: task 'tiny_qa': min must be a number, got 'high'"),
    ("tasks:\n  - tiny_qa\n  - name: tiny_qa\n    limit: 5\n",
     "3: task 'tiny_qa' is listed twice (first on line 2); give one of them its own baseline: "
     "name"),
    ("tasks:\n  - name: tiny_qa\n    limit: 5\n    limit: 6\n",
     "4: not valid YAML: key 'limit' is given twice"),
    ("model_name: ./m\ntasks:\n- name: tiny_qa\n  metrics:\n  - name: acc\n",
     "5: metric 'acc' of task 'tiny_qa' has no value:"),
], ids=["unclosed-bracket", "syntax", "unknown-key", "wrong-type", "no-tasks", "metric-without-name",
        "bad-threshold", "duplicate-task", "duplicate-key", "vllm-without-value"])
def test_bad_suite_is_a_one_line_collection_error(project: pytest.Pytester, text, message):
    project.makefile(".yaml", modelreg_bad=text)
    result = run(project)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*ERROR collecting modelreg_bad.yaml*",
                                 f"modelreg_bad.yaml:{message}"])
    assert "Traceback" not in result.stdout.str()


def test_suite_under_xdist(project: pytest.Pytester):
    project.makefile(".yaml", modelreg_smoke=SUITE)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--dist",
                                          "loadgroup", "--modelreg-record-missing")
    result.assert_outcomes(passed=2)
    for row in ("*modelreg_smoke.yaml::tiny_qa@modelreg-hf-* tiny_qa *acc*recorded*",
                "*modelreg_smoke.yaml::tiny_qa2@modelreg-hf-* tiny_qa2 *acc*recorded*"):
        result.stdout.fnmatch_lines([row])
    # Both tasks are of one model: grouped onto one worker, which loads it once.
    assert result.stdout.str().count("model loaded in") == 1
