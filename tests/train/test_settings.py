"""Recipe settings: TOML values, flags over them (dashes), unknown keys and wrong types rejected with the key named."""

import pytest

from opengemma.train.settings import parse

SPEC = {
    "steps": (10, int, ""),
    "lr": (1e-3, float, ""),
    "compile": (False, bool, ""),
    "model": ("tiny", str, ""),
    "model_config": ({}, dict, ""),
}


def test_toml_then_flags(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('steps = 20\nlr = 1\ncompile = true\n[model_config]\nd_model = 64\nname = "x"\n')
    s = parse(SPEC, ["--config", str(cfg), "--steps", "30", "--model-config", "n_layers=2,d_model=32", "--no-compile"])
    assert s["steps"] == 30 and s["lr"] == 1.0 and isinstance(s["lr"], float)  # an int in TOML is a float setting
    assert s["compile"] is False and s["model"] == "tiny"
    assert s["model_config"] == {"d_model": 32, "name": "x", "n_layers": 2}
    assert parse(SPEC, [])["steps"] == 10


@pytest.mark.parametrize(
    "text,message",
    [
        ("stepz = 3\n", "unknown keys \\['stepz'\\]"),
        ('steps = "3"\n', "steps must be int"),
        ("steps = \n", "not valid TOML"),
    ],
)
def test_bad_config_files_name_the_problem(tmp_path, capsys, text, message):
    cfg = tmp_path / "run.toml"
    cfg.write_text(text)
    with pytest.raises(SystemExit):
        parse(SPEC, ["--config", str(cfg)])
    assert pytest.importorskip("re").search(message, capsys.readouterr().err)
