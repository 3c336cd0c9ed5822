"""scripts/benchmark.py: a tiny run reports every figure for both models, after a passed parity check."""

import json
import math

from scripts_helpers import run_script

EXPECTED_METRICS = {
    "inference_bs1_throughput", "inference_bs4_throughput", "train_bs4_throughput",
    "inference_bs4_peak_rss_delta", "train_bs4_peak_rss_delta", "matcher_vs_scipy_loop",
    "onnxruntime_inference_bs1_throughput", "onnxruntime_inference_bs4_throughput",
    "onnxruntime_int8_inference_bs1_throughput", "onnxruntime_int8_inference_bs4_throughput",
    "onnxruntime_int8_static_inference_bs1_throughput", "onnxruntime_int8_static_inference_bs4_throughput",
    "onnxruntime_inference_bs4_peak_rss_delta", "onnxruntime_int8_inference_bs4_peak_rss_delta",
    "onnxruntime_int8_static_inference_bs4_peak_rss_delta",
    "user_path_inference_bs1_throughput", "user_path_train_bs2_aux_throughput",
}


def test_tiny_benchmark_reports_every_metric(tmp_path):
    output = tmp_path / "benchmark.json"
    # One thread: on a loaded 2-core machine, OpenMP's second thread stalls small ops by orders of magnitude.
    result = run_script("benchmark.py", "--tiny", "--repeats", "2", "--warmup", "1", "--threads", "1",
                        "--batch_size", "4", "--onnx", "--user_path", "--output", str(output), timeout=600)
    report = json.loads(output.read_text())

    assert report["parity"]["passed"] and report["parity"]["max_abs_diff_logits"] <= 1e-3
    assert set(report["metrics"]) == EXPECTED_METRICS
    for name, figures in report["metrics"].items():
        (model, value), (reference, reference_value) = list(figures.items())[:2]
        assert model == (name.split("_inference")[0] if name.startswith("onnx") else "detr_lite")
        assert reference == ("pytorch" if name.startswith("onnx") else "transformers")
        for figure in (value, reference_value):
            assert figure > 0 and math.isfinite(figure), (name, figures)
        assert math.isclose(figures["ratio"], value / reference_value)
    for name in ("onnxruntime", "onnxruntime_int8", "onnxruntime_int8_static"):
        assert report["onnx_parity"][name]["max_abs_diff_logits"] <= (1e-4 if name == "onnxruntime" else 1.0)
    matcher = report["matcher"]
    assert matcher["totals_equal"]
    assert math.isclose(matcher["detr_lite_total_cost"], matcher["reference_total_cost"], rel_tol=1e-5)
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["torch"]
    assert "benchmark.py" in report["command"] and "--tiny" in report["command"]
    assert "auxiliary_loss=False" in result.stdout and "matcher_vs_scipy_loop" in result.stdout
