"""Everything about the package is in pyproject.toml; this only ships conf/ inside it.

A non-editable install (``pip install .``) gets a copy of conf/ as ``experiments/conf``, so that
``experiments.compose_config``/``compose_model`` work outside the project folder too
(``experiments.config.find_conf_dir`` prefers the conf/ of the project the user stands in).
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConf(build_py):
    def run(self):
        super().run()
        if not self.editable_mode:  # an editable install reads the checkout's conf/
            self.copy_tree(str(Path(__file__).parent / "conf"), str(Path(self.build_lib) / "experiments" / "conf"))


setup(cmdclass={"build_py": BuildPyWithConf})
