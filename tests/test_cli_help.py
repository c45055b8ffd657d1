"""--help of every script and tool names each option's default (train_dpr.py's Config does its own)."""

import argparse
import importlib
import re

import pytest

SCRIPTS = [
    "doc2embedding",
    "test_dpr",
    "utils.bm25_train_data",
    "utils.mine_negatives",
    "utils.convert_dpr_checkpoint",
    "utils.download_data",
]


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_shows_every_default(name, monkeypatch):
    parsers = []

    def capture(self, argv=None, namespace=None):
        parsers.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        importlib.import_module(name).parse_args([])
    parser = parsers[0]
    text = parser.format_help()
    blocks = re.split(r"\n(?=  -)", text.split("\noptions:\n", 1)[1])  # one block per option
    actions = {a.option_strings[0]: a for a in parser._actions if a.option_strings}
    for block in blocks:
        action = actions[block.split()[0].rstrip(",")]
        if action.required or isinstance(action, argparse._HelpAction):
            continue
        assert "default" in " ".join(block.split()), f"{name} --help: {block.split()[0]} shows no default"
        if action.default not in (None, False) and "(default:" in block:
            assert f"(default: {action.default})" in " ".join(block.split())
