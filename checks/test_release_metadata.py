from lora_harness.verdicts.release_metadata import CHECK, evaluate_release_metadata


def test_release_metadata(adapter, harness, record_check):
    def evaluate():
        return evaluate_release_metadata(
            adapter.name,
            adapter.record.get("metadata") or {},
            harness.base_summary(),
            harness.base.signature.lineage,
            base_is_hub_id=harness.config.base_is_hub_id,
            require=harness.config.require_metadata,
        )

    record_check(adapter, harness.run_check(adapter, CHECK, evaluate))
