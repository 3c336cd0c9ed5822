"""scripts/benchmark.py: a tiny run reports every figure for both models, after a passed parity check."""

import json
import math

from scripts_helpers import run_script

EXPECTED_METRICS = {
    "inference_bs1_throughput", "inference_bs4_throughput", "train_bs4_throughput",
    "inference_bs4_peak_rss_delta", "train_bs4_peak_rss_delta", "matcher_vs_scipy_loop",
}


def test_tiny_benchmark_reports_every_metric(tmp_path):
    output = tmp_path / "benchmark.json"
    # One thread: on a loaded 2-core machine, OpenMP's second thread stalls small ops by orders of magnitude.
    result = run_script("benchmark.py", "--tiny", "--repeats", "2", "--warmup", "1", "--threads", "1",
                        "--batch_size", "4", "--output", str(output), timeout=300)
    report = json.loads(output.read_text())

    assert report["parity"]["passed"] and report["parity"]["max_abs_diff_logits"] <= 1e-3
    assert set(report["metrics"]) == EXPECTED_METRICS
    for name, figures in report["metrics"].items():
        for model in ("detr_lite", "transformers"):
            assert figures[model] > 0 and math.isfinite(figures[model]), (name, model, figures)
        assert math.isclose(figures["ratio"], figures["detr_lite"] / figures["transformers"])
    matcher = report["matcher"]
    assert matcher["totals_equal"]
    assert math.isclose(matcher["detr_lite_total_cost"], matcher["reference_total_cost"], rel_tol=1e-5)
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["torch"]
    assert "benchmark.py" in report["command"] and "--tiny" in report["command"]
    assert "auxiliary_loss=False" in result.stdout and "matcher_vs_scipy_loop" in result.stdout
