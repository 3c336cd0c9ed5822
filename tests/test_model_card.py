"""The model card template is filled completely, with YAML metadata the Hub reads."""

import yaml
from conftest import tiny_config

from detr_lite.training.model_card import render_model_card


def test_card_has_metadata_labels_and_metrics():
    metrics = {"AP": 0.4321, "AP50": 0.7, "AR100": 0.5, "per_class_AP": {"circle": 0.9, "square": float("nan")}}
    info = {"model_name": "me/shapes", "dataset_name": "synthetic", "train_split": "train", "eval_split": "val",
            "steps": 10, "images_seen": 80, "train_time": "1.0 min", "command": "python scripts/run_detection.py"}
    card = render_model_card(tiny_config(), metrics, info)
    assert "$" not in card
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["pipeline_tag"] == "object-detection" and metadata["library_name"] == "transformers"
    results = metadata["model-index"][0]["results"][0]
    assert {m["name"]: m["value"] for m in results["metrics"]} == {"mAP@[.5:.95]": 0.4321, "mAP@0.5": 0.7}
    assert "| 0 | circle | 0.9000 |" in card and "| 1 | square | n/a |" in card and "| 2 | triangle | n/a |" in card
    assert "python scripts/run_detection.py" in card


def test_card_describes_how_the_queries_are_made():
    info = {"model_name": "me/shapes"}
    learned = render_model_card(tiny_config(), {}, info)
    encoder = render_model_card(tiny_config(query_source="encoder", box_refinement=True), {}, info)
    assert "6 object queries" in learned and "encoder token" not in learned
    assert "one object query per encoder token" in encoder and "refined layer by layer" in encoder
    selected = render_model_card(tiny_config(query_source="encoder", num_selected_queries=5), {}, info)
    assert "5 object queries chosen among the encoder tokens' proposals" in selected
    assert "refined" not in selected
