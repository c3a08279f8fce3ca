import pytest

from components.core.config import ConfigError, StrictModel, dump_config, flatten, load_config


class Optim(StrictModel):
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


class Run(StrictModel):
    name: str
    epochs: int = 1
    optim: Optim = Optim()


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: demo\noptim:\n  lr: 0.01\n")
    cfg = load_config(Run, path, ["epochs=3", "optim.lr=3e-4"])
    assert cfg.name == "demo" and cfg.epochs == 3 and cfg.optim.lr == pytest.approx(3e-4)
    assert flatten(cfg)["optim.lr"] == pytest.approx(3e-4)
    assert load_config(Run, None, [f"name={cfg.name}"]).epochs == 1
    assert "name: demo" in dump_config(cfg)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["name=x", "epocs=2"], "epocs: Extra inputs are not permitted"),
        (["name=x", "epochs=many"], "epochs: Input should be a valid integer"),
        (["name=x", "optim.momentum=0.9"], "optim.momentum"),
        ([], "name: Field required"),
        (["name"], "not of the form"),
        (["name=x", "name.sub=1"], "is not a section"),
    ],
)
def test_mistakes_are_one_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Run, None, overrides)


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Run, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Run, bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Run, listy)
