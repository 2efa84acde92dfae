"""The README's config example is a valid config file whose values are the real defaults."""
import os
import re

from cymqtt.config import Config, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_config_example_loads_and_states_the_defaults(tmp_path):
    text = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"### Config file.*?```toml\n(.*?)```", text, re.S).group(1)
    path = tmp_path / "cymqtt.toml"
    path.write_text(block)
    assert load_config(str(path)) == Config()


def test_readme_opens_with_the_two_setup_commands():
    head = open(os.path.join(ROOT, "README.md")).read().splitlines()[:40]
    assert any("make run" in line for line in head)
    assert any("make test" in line for line in head)
