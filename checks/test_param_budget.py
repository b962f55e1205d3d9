from lora_harness.verdicts.param_budget import CHECK, evaluate_param_budget


def test_param_budget(adapter, harness, record_check):
    def evaluate():
        return evaluate_param_budget(
            adapter.name, adapter.application, harness.config.param_budget, harness.base.denoiser_params
        )

    record_check(adapter, harness.run_check(adapter, CHECK, evaluate))
