"""The demo and the command line stay runnable."""


from ipguard_jax import __main__ as cli
from ipguard_jax import demo


def test_demo_separates_copies_from_independent_models(capsys):
    rows = demo.run(num=30, epochs=6, progress=False)
    assert rows["exact copy"]["matching_rate"] == 1.0
    assert rows["exact copy"]["is_copy"]
    assert rows["fine-tuned copy"]["matching_rate"] > rows["independent A"]["matching_rate"]
    assert not rows["independent B (MLP)"]["is_copy"]
    assert "suspect" in capsys.readouterr().out


def test_cli_usage_and_unknown_command(capsys):
    assert cli.main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    assert cli.main(["frobnicate"]) == 2
    assert cli.main(["demo", "--num", "many"]) == 2  # argparse's one-line error, no traceback
    assert "invalid int value" in capsys.readouterr().err
    assert cli.main(["demo", "--help"]) == 0
