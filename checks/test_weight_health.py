from lora_harness.weight_health import CHECK, evaluate_weight_health, module_health


def test_weight_health(adapter, harness, record_check):
    def evaluate():
        modules = [module_health(name, down, up, scale) for name, (down, up, scale) in adapter.application.factors.items()]
        config = harness.config
        return evaluate_weight_health(adapter.name, modules, config.dead_share, config.norm_outlier_k, config.min_effective_rank_ratio)

    record_check(adapter, harness.run_check(adapter, CHECK, evaluate, uses_renders=False))
