"""The repository's configuration files agree with one another."""

import sys
from pathlib import Path

import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = set(project["dependencies"]) | {
        r
        for extra in ("book", "test", "lab")
        for r in project["optional-dependencies"][extra]
    }
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(
        item["pip"] for item in environment["dependencies"] if isinstance(item, dict)
    )
    assert set(pip) - {"-e ."} == expected
    assert "-e ." in pip


def test_torch_and_numpy_are_not_pinned_for_colab():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]
    for requirement in dependencies:
        assert "==" not in requirement and "<" not in requirement, requirement


def test_config_executes_nothing_and_names_the_repository():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"
    assert config["repository"]["url"].startswith("https://github.com/")
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
