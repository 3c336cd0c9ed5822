"""Build step that ships the top-level `model_card.md` (the one source of the template) inside the package, so a
wheel install writes model cards too. Everything else is in setup.cfg."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

TEMPLATE = "model_card.md"


class BuildWithModelCard(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "detr_lite" / "training" / TEMPLATE
        # An editable build's build_lib starts empty (the package stays in the checkout), so make the folder first.
        self.mkpath(str(target.parent))
        self.copy_file(TEMPLATE, str(target))


setup(cmdclass={"build_py": BuildWithModelCard})
