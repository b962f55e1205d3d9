from lora_harness.verdicts.weight_health import CHECK, evaluate_weight_health, lycoris_health, module_health


def test_weight_health(adapter, harness, record_check):
    def evaluate():
        application = adapter.application
        architecture = application.architecture
        modules = [
            module_health(name, down, up, scale, architecture)
            for name, (down, up, scale) in application.factors.items()
        ]
        modules += [
            lycoris_health(name, factors, architecture) for name, factors in application.lycoris_factors.items()
        ]
        config = harness.config
        return evaluate_weight_health(
            adapter.name, modules, config.dead_share, config.norm_outlier_k, config.min_effective_rank_ratio
        )

    record_check(adapter, harness.run_check(adapter, CHECK, evaluate))
