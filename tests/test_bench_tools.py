"""The benches with command lines of their own run as `python -m liteframe_jax.bench NAME [flags]`: the name
reaches that bench's own parser (its usage line names the command), and the shared parser still refuses an
unknown bench."""

import pytest

from liteframe_jax.bench.__main__ import TOOLS, main


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_a_tool_gets_its_own_flags(name, capsys):
    with pytest.raises(SystemExit) as stop:
        main([name, "--help"])
    assert stop.value.code == 0
    assert f"usage: python -m liteframe_jax.bench {name} " in capsys.readouterr().out


def test_an_unknown_bench_is_refused(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["vit_variants"])
    assert stop.value.code == 2 and "invalid choice: 'vit_variants'" in capsys.readouterr().err
