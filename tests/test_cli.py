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
