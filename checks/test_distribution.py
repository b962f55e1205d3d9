import pytest

from lora_harness.verdicts.fid_kid_cmmd import evaluate_distance, without_corpus
from lora_harness.verdicts.results import CheckResult


@pytest.mark.parametrize("check", ["fid", "kid", "cmmd"])
def test_distance_to_reference_corpus(check, adapter, harness, record_check):
    def evaluate():
        if harness.config.reference_images is None:
            return without_corpus(check, adapter.name)
        features, why_not, status = harness.features.for_distance(check)
        if features is None:
            return CheckResult(adapter.name, check, status, message=why_not)
        renders = lambda: (harness.renders(None), harness.renders(adapter))  # noqa: E731
        return evaluate_distance(check, adapter.name, features, renders, harness.reference_images)

    record_check(adapter, harness.run_check(adapter, check, evaluate))
