"""Fill the repository's `model_card.md` template for a saved model; it becomes the hub repo's README.md."""

import math
from pathlib import Path
from string import Template


def _template_path() -> Path:
    """The template: the top-level `model_card.md` of a source checkout (or editable install), else the copy the
    build puts next to this module in a wheel (setup.py's build step)."""
    here = Path(__file__).resolve().parent
    source = here.parents[1] / "model_card.md"
    return source if source.is_file() else here / "model_card.md"


TEMPLATE = _template_path()


def _number(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def render_model_card(config, metrics: dict, info: dict, template: Path = TEMPLATE) -> str:
    """The model card text.

    Args:
        config: the model's `DeTRLiteConfig` (labels, backbone, queries, input size).
        metrics: evaluation results as `coco_evaluate` names them (`AP`, `AP50`, ..., `per_class_AP`).
        info: `model_name`, `dataset_name`, `train_split`, `eval_split`, `steps`, `images_seen`, `train_time`,
            `command`.
    """
    per_class = metrics.get("per_class_AP") or {}
    label_rows = [f"| {index} | {name} | {_number(per_class.get(name))} |" for index, name in
                  sorted(config.id2label.items())]
    metric_rows = [f"| {key} | {_number(value)} |" for key, value in metrics.items()
                   if isinstance(value, (int, float))]
    values = {
        **{key: str(value) for key, value in info.items()},
        "backbone": config.backbone,
        "queries": _queries(config),
        "image_size": str(config.image_size),
        "map": _number(metrics.get("AP")),
        "map50": _number(metrics.get("AP50")),
        "label_table": "\n".join(["| id | label | AP |", "|---|---|---|", *label_rows]),
        "metrics_table": "\n".join(["| metric | value |", "|---|---|", *metric_rows]),
    }
    return Template(template.read_text()).safe_substitute(values)


def _queries(config) -> str:
    """How the model's object queries are made, for the card's one-line description."""
    if config.query_source == "encoder":
        refinement = ", refined layer by layer" if config.box_refinement else ""
        if config.box_query_position:
            refinement += ", each query's position embedded from its box"
        chosen = (f"{config.num_selected_queries} object queries chosen among the encoder tokens' proposals"
                  if config.num_selected_queries else "one object query per encoder token")
        return f"{chosen} (boxes relative to a token-centred anchor{refinement})"
    return f"{config.num_queries} object queries"


def write_model_card(folder: str | Path, config, metrics: dict, info: dict) -> Path:
    path = Path(folder) / "README.md"
    path.write_text(render_model_card(config, metrics, info))
    return path
