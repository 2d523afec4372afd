from pathlib import Path

import pytest

from enclave_ike import cli as enclave_cli
from ikectl import cli as ikectl_cli


@pytest.mark.parametrize("cli", [ikectl_cli, enclave_cli])
def test_version(cli, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert "0.1.0" in capsys.readouterr().out


@pytest.mark.parametrize("cli", [ikectl_cli, enclave_cli])
def test_no_command_is_usage_error(cli, capsys):
    assert cli.main([]) == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize("cli", [ikectl_cli, enclave_cli])
def test_unknown_command_exits_2_with_one_line(cli, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["no-such-command"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'no-such-command'" in capsys.readouterr().err


COMMANDS = [["up"], ["down"], ["status"], ["doctor"], ["verify"], ["render"], ["nm-dispatch"], ["install-nm-hook"],
            ["portal"], ["portal", "allow"], ["portal", "close"], ["portal", "show"], ["trust"], ["trust", "add"],
            ["trust", "list"], ["trust", "verify"], ["trust", "remove"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_commands_help_shows_the_global_options(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ikectl_cli.main([*command, "--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    assert "--config FILE" in shown and "-v, --verbose" in shown, shown


def test_global_options_go_before_or_after_the_command(tmp_path):
    before = ikectl_cli.build_parser().parse_args(["--config", str(tmp_path / "a.toml"), "-v", "status"])
    after = ikectl_cli.build_parser().parse_args(["status", "--config", str(tmp_path / "b.toml"), "-v"])
    neither = ikectl_cli.build_parser().parse_args(["status"])
    assert (before.config, before.verbose) == (tmp_path / "a.toml", True)
    assert (after.config, after.verbose) == (tmp_path / "b.toml", True)
    assert neither.verbose is False and neither.config is not None
    nested = ikectl_cli.build_parser().parse_args(["trust", "list", "--config", str(tmp_path / "c.toml")])
    assert nested.config == tmp_path / "c.toml"


def test_the_readme_lists_every_command():
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    for command in sorted({c[0] for c in COMMANDS}):
        assert f"ikectl {command}" in readme, command
