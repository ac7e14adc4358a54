"""A deployed endpoint as the model under test: lm-eval's ``local-completions`` against a small
OpenAI-compatible server (tests/openai_server.py) that serves the tiny model on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_modelreg.errors import EvaluationError
from pytest_modelreg.runner.lm_eval_runner import LmEvalRunner
from pytest_modelreg.spec import EvalSpec
from tests.conftest import TinyWorld, dedent
from tests.openai_server import Endpoint, free_port, get_json, serve
from tests.tiny import read_docs


def api_args(url: str, tokenizer: Path, **extra: object) -> str:
    """local-completions model_args: the client tokenizes (it needs context lengths for
    loglikelihoods) and sends token ids; one attempt, so a broken endpoint fails at once."""
    args = {"model": "tiny", "base_url": url, "tokenizer_backend": "huggingface",
            "tokenizer": tokenizer, "tokenized_requests": True, "num_concurrent": 1,
            "max_retries": 1, "timeout": 60, **extra}
    return ",".join(f"{k}={v}" for k, v in args.items())


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def good_endpoint(tiny: TinyWorld, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    with serve(tiny.good, log=tmp_path_factory.mktemp("server") / "server.log") as endpoint:
        yield endpoint


def test_server_answers_like_the_openai_api(good_endpoint: Endpoint):
    assert get_json(f"{good_endpoint.base_url}/models")["data"][0]["id"] == "tiny"


@pytest.mark.parametrize("extra", [{}, {"tokenized_requests": False, "batch_size": 4, "num_concurrent": 2}],
                         ids=["token-ids", "strings-batched-concurrent"])
def test_endpoint_scores_like_the_hf_model(tiny: TinyWorld, good_endpoint: Endpoint, extra):
    batch_size = str(extra.pop("batch_size", 1))
    runner = LmEvalRunner(include_paths=(tiny.tasks,))
    try:
        local = runner.evaluate(EvalSpec(task="tiny_qa", model="hf", model_args=f"pretrained={tiny.good}",
                                         device="cpu", limit=30))
        remote = runner.evaluate(EvalSpec(
            task="tiny_qa", model="local-completions", device="cpu", limit=30, batch_size=batch_size,
            model_args=api_args(good_endpoint.completions_url, tiny.good, **extra)))
    finally:
        runner.close()
    assert remote.n_samples == local.n_samples == 30
    assert remote.metrics == local.metrics
    assert remote.metrics["acc"] >= 0.9  # a trained model, not two equally broken answers
    assert {s.doc_id: s.values for s in remote.samples} == {s.doc_id: s.values for s in local.samples}
    assert remote.fingerprint == local.fingerprint  # a baseline recorded on one compares with the other
    assert remote.provenance["model"]["endpoint"] == good_endpoint.completions_url


GEN_TASK = r"""
task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{choices[label]}}}}"
generation_kwargs:
  until: ["blue"]
  max_gen_toks: 3
  do_sample: false
filter_list:
  - name: first-word
    filter:
      - function: regex
        regex_pattern: '(\w+)'
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def test_endpoint_generates_like_the_hf_model(tiny: TinyWorld, good_endpoint: Endpoint, tmp_path: Path):
    """generate_until: greedy, 3 tokens, cut at the stop string "blue". The tiny model repeats
    its answer ("green blue blue"), so a doc whose answer is blue generates nothing (scores 0)."""
    data = tiny.tasks / "tiny_qa.jsonl"
    (tmp_path / "tiny_gen.yaml").write_text(GEN_TASK.format(data=json.dumps(str(data))))
    runner = LmEvalRunner(include_paths=(tmp_path,))
    try:
        local = runner.evaluate(EvalSpec(task="tiny_gen", model="hf", model_args=f"pretrained={tiny.good}",
                                         device="cpu", limit=30))
        remote = runner.evaluate(EvalSpec(task="tiny_gen", model="local-completions", device="cpu",
                                          limit=30, model_args=api_args(good_endpoint.completions_url,
                                                                        tiny.good)))
    finally:
        runner.close()
    blue = sum(d["choices"][d["label"]] == "blue" for d in read_docs(data)[:30])
    assert 0 < blue < 10
    assert local.metrics["exact_match"] == pytest.approx(1 - blue / 30)
    assert remote.metrics == local.metrics
    assert {s.doc_id: s.values for s in remote.samples} == {s.doc_id: s.values for s in local.samples}


def test_unreachable_endpoint_fails_in_one_line(tiny: TinyWorld):
    url = f"http://127.0.0.1:{free_port()}/v1/completions"  # nothing listens there
    runner = LmEvalRunner(include_paths=(tiny.tasks,))
    spec = EvalSpec(task="tiny_qa", model="local-completions", model_args=api_args(url, tiny.good),
                    device="cpu", limit=2)
    try:
        with pytest.raises(EvaluationError, match=r"evaluating tiny_qa on local-completions\(.*"
                                                  r"failed: ConnectionError: .*Connection refused"):
            runner.evaluate(spec)
    finally:
        runner.close()


def test_regression_behind_the_same_endpoint_fails(project: pytest.Pytester, tiny: TinyWorld,
                                                   tmp_path: Path):
    """The team's view: the URL and model_args stay the same; the deployment behind them changes.

    The inner sessions run with pytest's defaults (cacheprovider on, so the plugin's result cache
    too), as a team would run them: a result cached for the URL must not stand in for a new
    deployment behind it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/completions"
    project.makefile(".ini", pytest=tiny.ini(modelreg_model="local-completions",
                                             modelreg_model_args=api_args(url, tiny.good)))
    project.makepyfile(test_endpoint=dedent("""
        import pytest

        @pytest.mark.modelreg(task="tiny_qa", metrics=["acc"])
        def test_qa():
            pass
    """))
    baseline = project.path / "baselines" / "tiny_qa.json"

    with serve(tiny.good, port=port, log=tmp_path / "good.log"):
        first = project.runpytest("--modelreg-record-missing")
        first.assert_outcomes(passed=1)
        recorded = json.loads(baseline.read_text())
        assert recorded["metrics"]["acc"]["value"] >= 0.9
        assert recorded["provenance"]["model"]["endpoint"] == url
        same = project.runpytest()
        same.assert_outcomes(passed=1)
        same.stdout.fnmatch_lines(["*test_endpoint.py::test_qa*tiny_qa*acc*+0.0000*pass*"])

    with serve(tiny.degraded, port=port, log=tmp_path / "degraded.log"):
        worse = project.runpytest()
    assert "served from the result cache" not in worse.stdout.str(), \
        "the result cache answered for the endpoint although the model behind it changed"
    worse.assert_outcomes(failed=1)
    worse.stdout.fnmatch_lines(["*modelreg: tiny_qa: acc fell from * to * more than the tolerated 0*",
                                "*test_endpoint.py::test_qa*tiny_qa*acc*regressed*"])
    assert json.loads(baseline.read_text()) == recorded  # a failing run never writes
