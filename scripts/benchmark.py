"""Benchmark DeTR-Lite against transformers' DetrForObjectDetection holding the same weights, in the same run.

    python scripts/benchmark.py --batch_size 4 --repeats 5 --output benchmark.json           # R50 at 640, CPU
    python scripts/benchmark.py --device cuda --dtype bf16 --compile --output benchmark.json  # + TFLOP/s and MFU
    python scripts/benchmark.py --tiny --repeats 2 --warmup 1                                # seconds, for tests
    python scripts/benchmark.py --onnx --user_path --batch_size 4 --threads 2                # + ONNX Runtime, user path

A random transformers DETR (timm backbone) is converted with `detr_lite.conversion`; the two models
must give the same outputs (max abs diff <= 1e-3) before anything is timed. Repetitions of the two
models are interleaved (A B A B ...) after warm-up so that a load change on a shared machine hits both;
figures are medians. Auxiliary decoding losses are off in both models, so both training steps compute
the same loss (transformers' own loss for transformers, DeTR-Lite's for DeTR-Lite). Peak CPU memory
is measured in a fresh subprocess per model and phase; on CUDA, `torch.cuda.max_memory_allocated`.

--onnx adds ONNX Runtime rows (CPU): the same DeTR-Lite weights exported with `detr_lite.onnx_export`, fp32,
dynamic int8 and static int8 (calibrated on four synthetic scenes), timed interleaved with the PyTorch model (batch
norms folded), with peak memory. --user_path adds the path a new user takes: both models saved, reloaded with
`from_pretrained` and called as `model(**inputs)` (batch 1 inference, and a training step at batch 2 with
auxiliary loss on in both).
"""

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from scipy.optimize import linear_sum_assignment
from transformers import AutoModelForObjectDetection, DetrConfig, DetrForObjectDetection

from detr_lite import DeTRLiteForObjectDetection
from detr_lite.box_ops import center_to_corners, generalized_box_iou
from detr_lite.conversion import config_from_hf, convert_hf_state_dict
from detr_lite.loss_detr_lite import HungarianMatcher

MODELS = ("detr_lite", "transformers")
PARITY_TOLERANCE = 1e-3
# (layers, batch, queries, classes + 1, targets per image) of the matcher-only benchmark.
MATCHER_SHAPE = (6, 32, 100, 92, 20)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: torch.autocast for both")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--tiny", action="store_true", help="a small model at 128 px, for a quick run")
    parser.add_argument("--backbone", default=None, help="timm backbone (default resnet50, resnet18 with --tiny)")
    parser.add_argument("--image_size", type=int, default=None, help="square input side (default 640, 128 with --tiny)")
    parser.add_argument("--peak_tflops", type=float, default=989.0, help="device peak for MFU (H100 dense bf16)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); 1 avoids OpenMP stalls on a loaded machine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="write every figure to this JSON file")
    parser.add_argument("--onnx", action="store_true", help="add ONNX Runtime rows (fp32, int8, CPU)")
    parser.add_argument("--user_path", action="store_true", help="add the from_pretrained + model(**inputs) rows")
    parser.add_argument("--onnx_file", default=None, help=argparse.SUPPRESS)  # internal, for memory children
    parser.add_argument("--memory_child", default=None, help=argparse.SUPPRESS)  # "model:phase", internal
    args = parser.parse_args()
    if args.batch_size < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--batch_size and --repeats must be >= 1, --warmup >= 0.")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but CUDA is not available.")
    args.backbone = args.backbone or ("resnet18" if args.tiny else "resnet50")
    args.image_size = args.image_size or (128 if args.tiny else 640)
    return args


# ---------------------------------------------------------------- models and inputs

def hf_config(args: argparse.Namespace) -> DetrConfig:
    """transformers' DETR config; auxiliary loss off (see the module docstring)."""
    small = {"d_model": 32, "encoder_layers": 2, "decoder_layers": 3, "encoder_attention_heads": 4,
             "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "num_queries": 20}
    return DetrConfig(backbone=args.backbone, num_labels=91, auxiliary_loss=False, **(small if args.tiny else {}))


def build_transformers(args: argparse.Namespace) -> DetrForObjectDetection:
    torch.manual_seed(args.seed)
    return DetrForObjectDetection(hf_config(args))


def lite_config(hf: DetrConfig):
    config = config_from_hf(hf.to_dict())
    config.auxiliary_loss = hf.auxiliary_loss  # config_from_hf leaves DeTR-Lite's default (on)
    return config


def build_pair(args: argparse.Namespace) -> tuple[DeTRLiteForObjectDetection, DetrForObjectDetection]:
    """A random transformers DETR and its DeTR-Lite conversion, both in eval mode."""
    reference = build_transformers(args).eval()
    lite = DeTRLiteForObjectDetection(lite_config(reference.config))
    lite.load_state_dict(convert_hf_state_dict(reference.state_dict()))
    return lite.eval(), reference


def make_images(batch: int, size: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """pixel_values (B, 3, S, S) and an all-ones pixel_mask (B, S, S)."""
    return torch.randn(batch, 3, size, size, device=device), torch.ones(batch, size, size, dtype=torch.long,
                                                                        device=device)


def random_boxes(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """(*shape, 4) valid (cx, cy, w, h) boxes lying inside the unit square, sides 0.05..0.5."""
    wh = torch.rand(*shape, 2, generator=generator) * 0.45 + 0.05
    return torch.cat([wh / 2 + torch.rand(*shape, 2, generator=generator) * (1 - wh), wh], dim=-1)


def make_labels(batch: int, num_labels: int, device: str, generator: torch.Generator,
                counts: tuple[int, int] = (3, 20)) -> list[dict]:
    """Per image, counts[0]..counts[1] random boxes and classes."""
    labels = []
    for _ in range(batch):
        n = int(torch.randint(counts[0], counts[1] + 1, (), generator=generator))
        labels.append({"class_labels": torch.randint(0, num_labels, (n,), generator=generator).to(device),
                       "boxes": random_boxes((n,), generator).to(device)})
    return labels


def parity(lite: DeTRLiteForObjectDetection, reference: DetrForObjectDetection, args: argparse.Namespace) -> dict:
    """Max abs differences of logits and boxes in fp32 on two images, the second one padded."""
    pixel_values, pixel_mask = make_images(2, args.image_size, args.device)
    pixel_mask[1, args.image_size * 3 // 4:] = 0
    pixel_mask[1, :, args.image_size * 2 // 3:] = 0
    with torch.inference_mode():
        expected = reference(pixel_values=pixel_values, pixel_mask=pixel_mask)
        actual = lite(pixel_values=pixel_values, pixel_mask=pixel_mask)
    logits = (expected.logits - actual.logits).abs().max().item()
    boxes = (expected.pred_boxes - actual.pred_boxes).abs().max().item()
    return {"max_abs_diff_logits": logits, "max_abs_diff_boxes": boxes, "tolerance": PARITY_TOLERANCE,
            "passed": max(logits, boxes) <= PARITY_TOLERANCE}


# ---------------------------------------------------------------- steps

def autocast(args: argparse.Namespace):
    if args.dtype == "bf16":
        return torch.autocast(args.device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def inference_step(model, batch: int, args: argparse.Namespace) -> Callable[[], None]:
    pixel_values, pixel_mask = make_images(batch, args.image_size, args.device)

    def step() -> None:
        with torch.inference_mode(), autocast(args):
            model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    return step


def training_step(model, batch: int, args: argparse.Namespace) -> Callable[[], None]:
    """Forward with labels, loss, backward and an AdamW step; the same targets for both models."""
    pixel_values, pixel_mask = make_images(batch, args.image_size, args.device)
    labels = make_labels(batch, 91, args.device, torch.Generator().manual_seed(args.seed))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(args):
            loss = model(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels).loss
        loss.backward()
        optimizer.step()
    return step


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(steps: dict[str, Callable[[], None]], args: argparse.Namespace) -> dict[str, float]:
    """Median seconds per call of each step, calls alternating between the steps after warm-up."""
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            synchronize(args.device)
            start = time.perf_counter()
            step()
            synchronize(args.device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def count_flops(step: Callable[[], None]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


# ---------------------------------------------------------------- memory

def _vm_status(field: str) -> int | None:
    """A /proc/self/status field in bytes, None where there is no procfs."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0) so that the peak is the phase's own."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def memory_step(name: str, phase: str, args: argparse.Namespace) -> Callable[[], None]:
    """One model's step for one phase, built in this (fresh) process."""
    if name.startswith("onnxruntime"):
        return onnx_step(onnx_detector(Path(args.onnx_file), args), args.batch_size, args)
    if name == "transformers":
        model = build_transformers(args)
    else:  # built directly: a conversion would leave the transformers model in the peak before the phase
        torch.manual_seed(args.seed)
        model = DeTRLiteForObjectDetection(lite_config(hf_config(args)))
        if phase == "inference":
            inference_model(model)
    model = maybe_compile(model.train() if phase == "train" else model.eval(), args)
    return (training_step if phase == "train" else inference_step)(model, args.batch_size, args)


def memory_child(args: argparse.Namespace) -> None:
    """In a fresh process: build one model, run one phase, print its peak RSS increase as JSON."""
    step = memory_step(*args.memory_child.split(":"), args)
    gc.collect()
    reset = _reset_peak_rss()
    before = _vm_status("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for _ in range(2):  # the second training step runs with AdamW's state allocated
        step()
    peak = _vm_status("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    method = "VmHWM reset via clear_refs" if reset else "ru_maxrss"
    print(json.dumps({"peak_delta_mib": (peak - before) / 2**20, "method": method}))


def cpu_peak_memory(phase: str, args: argparse.Namespace, models: tuple[str, ...] = MODELS,
                    extra: tuple[str, ...] = ()) -> dict[str, dict]:
    """Peak RSS increase (MiB) of each model for one phase, each in its own subprocess."""
    results = {}
    for name in models:
        command = [sys.executable, os.path.abspath(__file__), *strip_output(sys.argv[1:]), *extra,
                   "--memory_child", f"{name}:{phase}"]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"memory measurement of {name} {phase} failed:\n{done.stderr[-3000:]}")
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def strip_output(argv: list[str]) -> list[str]:
    """argv without --output FILE (the child must not write the report)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--output":
            skip = True
        elif not arg.startswith("--output="):
            kept.append(arg)
    return kept


def cuda_peak_memory(step: Callable[[], None]) -> float:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def inference_model(model: DeTRLiteForObjectDetection) -> DeTRLiteForObjectDetection:
    """DeTR-Lite as deployed for inference: eval mode, batch norms folded into the convolutions."""
    model.eval().fold_batch_norm()
    return model


def maybe_compile(model, args: argparse.Namespace):
    return torch.compile(model) if args.compile else model


# ---------------------------------------------------------------- matcher

def reference_match(logits: torch.Tensor, boxes: torch.Tensor, labels: list[dict], costs: tuple[float, float, float]):
    """Per layer, per image: build the (Q, n) cost matrix and solve it with scipy; returns matches and matrices."""
    class_weight, bbox_weight, giou_weight = costs
    matches, matrices = [], []
    for layer in range(logits.shape[0]):
        for image, target in enumerate(labels):
            probabilities = logits[layer, image].softmax(-1)  # (Q, C + 1)
            cost = (-class_weight * probabilities[:, target["class_labels"]]
                    + bbox_weight * torch.cdist(boxes[layer, image], target["boxes"], p=1)
                    - giou_weight * generalized_box_iou(center_to_corners(boxes[layer, image]),
                                                        center_to_corners(target["boxes"])))  # (Q, n)
            matrix = cost.numpy()
            matches.append(linear_sum_assignment(matrix))
            matrices.append(matrix)
    return matches, matrices


def total_cost(matches, matrices: list[np.ndarray]) -> float:
    return float(sum(matrix[rows, cols].sum() for (rows, cols), matrix in zip(matches, matrices)))


def benchmark_matcher(args: argparse.Namespace) -> dict:
    """DeTR-Lite's batched matcher vs a per-image, per-layer scipy loop, on the CPU, same problems."""
    layers, batch, queries, classes, targets = MATCHER_SHAPE
    generator = torch.Generator().manual_seed(args.seed)
    logits = torch.randn(layers, batch, queries, classes, generator=generator)
    boxes = random_boxes((layers, batch, queries), generator)
    labels = make_labels(batch, classes - 1, "cpu", generator, counts=(targets, targets))
    device_inputs = (logits.to(args.device), boxes.to(args.device),
                     [{key: value.to(args.device) for key, value in target.items()} for target in labels])
    matcher = HungarianMatcher()
    costs = (matcher.class_cost, matcher.bbox_cost, matcher.giou_cost)
    reference, matrices = reference_match(logits, boxes, labels, costs)
    matching = matcher(*device_inputs)
    lite = [matching.pairs(layer, image) for layer in range(layers) for image in range(batch)]
    lite_total = total_cost([(q.numpy(), t.numpy()) for q, t in lite], matrices)
    reference_total = total_cost(reference, matrices)
    seconds = interleaved_medians({"detr_lite": lambda: matcher(*device_inputs),
                                   "reference_loop": lambda: reference_match(logits, boxes, labels, costs)}, args)
    return {"shape": dict(zip(("layers", "batch", "queries", "classes_plus_one", "targets_per_image"),
                              MATCHER_SHAPE)),
            "detr_lite_total_cost": lite_total, "reference_total_cost": reference_total,
            "totals_equal": bool(abs(lite_total - reference_total) <= 1e-4 * max(1.0, abs(reference_total))),
            "seconds": seconds}


# ---------------------------------------------------------------- ONNX Runtime and the user path

def export_for_benchmark(model: DeTRLiteForObjectDetection, folder: Path, args: argparse.Namespace) -> dict[str, Path]:
    """The model as fp32, dynamic-int8 and static-int8 ONNX files (dynamic batch), in `folder`. Static int8 is
    calibrated on a few synthetic scenes: the weights are random, so only its speed means anything here."""
    from detr_lite.data.synthetic import render_sample
    from detr_lite.image_processing_detr_lite import DeTRLiteImageProcessor
    from detr_lite.onnx_export import export_onnx, quantize_int8

    fp32 = export_onnx(model, DeTRLiteImageProcessor(size=args.image_size), folder / "model.onnx")
    scenes = []
    for index in range(4):
        scenes.append(folder / f"scene{index}.png")
        Image.fromarray(render_sample(args.seed, 0, index).image).save(scenes[-1])
    return {"onnxruntime": fp32, "onnxruntime_int8": quantize_int8(fp32, folder / "model.int8.onnx"),
            "onnxruntime_int8_static": quantize_int8(fp32, folder / "model.int8s.onnx", calibration_images=scenes)}


def onnx_detector(path: Path, args: argparse.Namespace):
    from detr_lite.onnx_runtime import ONNXDetector

    return ONNXDetector(path, threads=args.threads or torch.get_num_threads())


def onnx_step(detector, batch: int, args: argparse.Namespace) -> Callable[[], None]:
    pixel_values, pixel_mask = make_images(batch, args.image_size, "cpu")
    return lambda: detector.forward(pixel_values, pixel_mask)


def benchmark_onnx(lite: DeTRLiteForObjectDetection, args: argparse.Namespace, metrics: dict) -> dict:
    """ONNX Runtime fp32, dynamic int8 and static int8 against the folded PyTorch model: parity, images/s and
    peak memory."""
    folded = inference_model(copy.deepcopy(lite))
    with tempfile.TemporaryDirectory() as folder:
        files = export_for_benchmark(lite, Path(folder), args)
        detectors = {name: onnx_detector(path, args) for name, path in files.items()}
        pixel_values, pixel_mask = make_images(2, args.image_size, "cpu")
        pixel_mask[1, args.image_size // 2:] = 0
        with torch.inference_mode():
            expected = folded(pixel_values=pixel_values, pixel_mask=pixel_mask)
        check = {}
        for name, detector in detectors.items():
            actual = detector.forward(pixel_values, pixel_mask)
            check[name] = {"max_abs_diff_logits": (actual.logits - expected.logits).abs().max().item(),
                           "max_abs_diff_boxes": (actual.pred_boxes - expected.pred_boxes).abs().max().item()}
        for batch in sorted({1, args.batch_size}):
            steps = {"pytorch": inference_step(folded, batch, args)}
            steps.update({name: onnx_step(detector, batch, args) for name, detector in detectors.items()})
            seconds = interleaved_medians(steps, args)
            for name in detectors:
                metrics[f"{name}_inference_bs{batch}_throughput"] = named_metric(
                    {name: batch / seconds[name], "pytorch": batch / seconds["pytorch"]}, "images/s", True)
        memory = cpu_peak_memory("inference", args, ("detr_lite",))
        for name, path in files.items():  # each file in its own child: --onnx_file names it
            memory.update(cpu_peak_memory("inference", args, (name,), ("--onnx_file", str(path))))
    for name in detectors:
        metrics[f"{name}_inference_bs{args.batch_size}_peak_rss_delta"] = named_metric(
            {name: memory[name]["peak_delta_mib"], "pytorch": memory["detr_lite"]["peak_delta_mib"]}, "MiB", False)
    return check


def reloaded(model: torch.nn.Module, folder: Path) -> torch.nn.Module:
    """`model` saved and loaded back as a user loads it."""
    model.save_pretrained(folder)
    return AutoModelForObjectDetection.from_pretrained(folder)


def benchmark_user_path(args: argparse.Namespace, metrics: dict) -> None:
    """from_pretrained + model(**inputs): batch 1 inference and a batch 2 training step, auxiliary loss on."""
    reference = build_transformers(args)
    reference.config.auxiliary_loss = True
    lite = DeTRLiteForObjectDetection(config_from_hf(reference.config.to_dict()))  # auxiliary loss on by default
    lite.load_state_dict(convert_hf_state_dict(reference.state_dict()))
    with tempfile.TemporaryDirectory() as folder:
        models = {"detr_lite": reloaded(lite, Path(folder) / "lite").eval(),
                  "transformers": reloaded(reference, Path(folder) / "transformers").eval()}
    seconds = interleaved_medians({name: user_inference_step(model, args) for name, model in models.items()}, args)
    metrics["user_path_inference_bs1_throughput"] = throughput(seconds, 1)
    steps = {name: training_step(model.train(), 2, args) for name, model in models.items()}
    metrics["user_path_train_bs2_aux_throughput"] = throughput(interleaved_medians(steps, args), 2)


def user_inference_step(model, args: argparse.Namespace) -> Callable[[], None]:
    pixel_values, pixel_mask = make_images(1, args.image_size, args.device)
    inputs = {"pixel_values": pixel_values, "pixel_mask": pixel_mask}

    def step() -> None:
        with torch.no_grad():
            model(**inputs)
    return step


# ---------------------------------------------------------------- report

def metric(lite: float, reference: float, unit: str, higher_is_better: bool) -> dict:
    """Both figures and DeTR-Lite / reference."""
    return named_metric({"detr_lite": lite, "transformers": reference}, unit, higher_is_better)


def named_metric(values: dict[str, float], unit: str, higher_is_better: bool) -> dict:
    """Two named figures (the measured one first, then its reference) and their ratio."""
    (name, value), (reference_name, reference) = values.items()
    return {name: value, reference_name: reference, "ratio": value / reference, "unit": unit,
            "higher_is_better": higher_is_better}


def throughput(seconds: dict[str, float], batch: int) -> dict:
    return metric(batch / seconds["detr_lite"], batch / seconds["transformers"], "images/s", True)


def machine(args: argparse.Namespace) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def print_table(metrics: dict[str, dict]) -> None:
    rows = [("metric", "measured", "reference", "ratio")]
    for name, m in metrics.items():
        (_, value), (reference_name, reference) = list(m.items())[:2]
        rows.append((f"{name} [{m['unit']}]", f"{value:.4g}", f"{reference:.4g} ({reference_name})",
                     f"{m['ratio']:.3f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for index, row in enumerate(rows):
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths)))
        if index == 0:
            print("-|-".join("-" * width for width in widths))


def run_phase(phase: str, batch: int, models: dict, args: argparse.Namespace, metrics: dict) -> None:
    """Time one phase for both models; on CUDA also peak memory, TFLOP/s and MFU."""
    make_step = training_step if phase == "train" else inference_step
    steps = {name: make_step(model, batch, args) for name, model in models.items()}
    seconds = interleaved_medians(steps, args)
    key = f"{phase}_bs{batch}"
    metrics[f"{key}_throughput"] = throughput(seconds, batch)
    if args.device != "cuda":
        return
    memory = {name: cuda_peak_memory(step) for name, step in steps.items()}
    metrics[f"{key}_peak_memory"] = metric(memory["detr_lite"], memory["transformers"], "MiB", False)
    eager = {name: getattr(model, "_orig_mod", model) for name, model in models.items()}
    tflops = {name: count_flops(make_step(eager[name], batch, args)) / seconds[name] / 1e12 for name in models}
    metrics[f"{key}_tflops"] = metric(tflops["detr_lite"], tflops["transformers"], "TFLOP/s", True)
    metrics[f"{key}_mfu"] = metric(tflops["detr_lite"] / args.peak_tflops, tflops["transformers"] / args.peak_tflops,
                                   f"fraction of {args.peak_tflops:g} TFLOP/s", True)


def main() -> int:
    args = parse_args()  # from sys.argv, which the memory subprocesses and the report reuse
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return 0
    lite, reference = build_pair(args)
    lite, reference = lite.to(args.device), reference.to(args.device)
    folded = inference_model(copy.deepcopy(lite))
    check = parity(folded, reference, args)
    print(f"parity: max abs diff logits {check['max_abs_diff_logits']:.2e}, boxes {check['max_abs_diff_boxes']:.2e}")
    if not check["passed"]:
        print(f"Outputs differ by more than {PARITY_TOLERANCE}: the comparison would be meaningless.", file=sys.stderr)
        return 1
    metrics: dict[str, dict] = {}
    models = {"detr_lite": maybe_compile(folded, args), "transformers": maybe_compile(reference, args)}
    for batch in sorted({1, args.batch_size}):
        run_phase("inference", batch, models, args, metrics)
    models = {"detr_lite": maybe_compile(lite.train(), args), "transformers": maybe_compile(reference.train(), args)}
    run_phase("train", args.batch_size, models, args, metrics)
    if args.device == "cpu":
        for phase in ("inference", "train"):
            memory = cpu_peak_memory(phase, args)
            metrics[f"{phase}_bs{args.batch_size}_peak_rss_delta"] = metric(
                memory["detr_lite"]["peak_delta_mib"], memory["transformers"]["peak_delta_mib"], "MiB", False)
    onnx_parity = benchmark_onnx(lite, args, metrics) if args.onnx else None
    if args.user_path:
        benchmark_user_path(args, metrics)
    matcher = benchmark_matcher(args)
    metrics["matcher_vs_scipy_loop"] = metric(1 / matcher["seconds"]["detr_lite"],
                                              1 / matcher["seconds"]["reference_loop"], "calls/s", True)
    notes = [
        ("auxiliary_loss=False in both models so that both training steps compute the same loss "
         "(transformers' own loss for transformers, DeTR-Lite's criterion for DeTR-Lite)."),
        "ratio = DeTR-Lite / transformers: > 1 is better for throughput, < 1 is better for memory.",
        ("matcher row: DeTR-Lite's HungarianMatcher vs a per-layer, per-image scipy loop written in this script "
         f"(shape {matcher['shape']}), in the transformers column."),
        "CPU memory: peak RSS increase of one phase (2 steps) in a fresh subprocess per model.",
        "DeTR-Lite inference runs as deployed: batch norms folded into the convolutions (fold_batch_norm).",
    ]
    print_table(metrics)
    for note in notes:
        print("note:", note)
    report = {"command": " ".join([sys.executable, *sys.argv]), "machine": machine(args),
              "settings": {k: v for k, v in vars(args).items() if k not in ("memory_child", "onnx_file")},
              "parity": check, "onnx_parity": onnx_parity,
              "metrics": metrics, "matcher": matcher, "notes": notes}
    if args.output:
        with open(args.output, "w") as file:
            json.dump(report, file, indent=2)
    if not matcher["totals_equal"]:
        print("The two matchers found assignments of different total cost.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
