"""The wheel: built from the repository and installed into a fresh virtual environment, it trains with
scripts/run_detection.py from outside the repository and writes best/README.md from the shipped template."""

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from test_run_detection import TINY_PRESET

from detr_lite.data.synthetic import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]


def run(*command, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # no way back to the sources
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"{command}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def test_a_wheel_install_trains_and_writes_the_model_card(tmp_path):
    run(sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w",
        tmp_path / "dist", cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("detr_lite-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read("detr_lite/training/model_card.md").decode()
    assert shipped == (REPO / "model_card.md").read_text()  # one source: the top-level template

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    if sys.prefix != sys.base_prefix:
        # The tests themselves run in a virtual environment, whose packages --system-site-packages does not reach:
        # expose them as a plain path (its .pth hooks, such as an editable install of this project, stay off).
        site_packages = run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path)
        (Path(site_packages.stdout.strip()) / "parent_environment.pth").write_text(sysconfig.get_path("purelib"))
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel, cwd=tmp_path)
    # Outside the repository, with nothing on PYTHONPATH: only the installed wheel can be imported.
    location = run(python, "-c", "import detr_lite.training.model_card as m; print(m.TEMPLATE)", cwd=tmp_path)
    assert str(venv) in location.stdout and str(REPO) not in location.stdout

    data_dir = make_synthetic_dataset(tmp_path / "data", num_train=4, num_val=2, seed=1)
    recipe = json.loads(json.dumps(TINY_PRESET))
    recipe["training"].update(max_train_steps=2, eval_every=2, checkpointing_steps=2)
    (tmp_path / "preset.json").write_text(json.dumps(recipe))
    run(python, REPO / "scripts" / "run_detection.py", "--config", tmp_path / "preset.json", "--data_dir", data_dir,
        "--output_dir", tmp_path / "out", cwd=tmp_path)
    card = (tmp_path / "out" / "best" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers") and "$dataset_name" not in card
    assert "resnet18" in card and (tmp_path / "out" / "best" / "model.safetensors").is_file()
