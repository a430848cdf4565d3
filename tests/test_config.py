"""Strict YAML configs with overrides; every shipped conf/*.yaml loads into its dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import pytest

from asr import config
from asr.errors import AsrError


@dataclass
class Optim:
    kind: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3


@dataclass
class Top:
    layers: int = 4
    name: str = "x"
    dims: list[int] = field(default_factory=lambda: [1, 2])
    optim: Optim = field(default_factory=Optim)


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("layers: 2\noptim:\n  lr: 1\n")
    cfg = config.load(Top, f, ["optim.kind=sgd", "dims=[3, 4]", "name=abc"])
    assert cfg == Top(layers=2, name="abc", dims=[3, 4], optim=Optim("sgd", 1.0))
    out = tmp_path / "out.yaml"
    config.dump(cfg, out)
    assert config.load(Top, out) == cfg


@pytest.mark.parametrize(
    "yaml_text, overrides, message",
    [
        ("layerz: 2\n", [], "unknown key(s) layerz"),
        ("optim:\n  momentum: 0.9\n", [], "optim: unknown key(s) momentum"),
        ("", ["optim.kind=rmsprop"], "'rmsprop' is not one of 'adam', 'sgd'"),
        ("layers: two\n", [], "layers: expected int"),
        ("", ["optim.lr=fast"], "optim.lr: expected a number, got 'fast'"),
        ("", ["nokey"], "expected key=value"),
        ("[1, 2]\n", [], "expected a mapping"),
        ("a: [\n", [], "not valid YAML"),
    ],
)
def test_bad_configs_are_one_line(tmp_path, yaml_text, overrides, message):
    f = tmp_path / "c.yaml"
    f.write_text(yaml_text)
    with pytest.raises(AsrError) as err:
        config.load(Top, f, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_float_written_without_a_dot_is_a_number(tmp_path):
    # PyYAML reads 3e-4 (YAML 1.1 wants 3.0e-4) as the string '3e-4'; a float field still gets the number.
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 3e-4\n")
    assert config.load(Top, f).optim.lr == 3e-4
    assert config.load(Top, None, ["optim.lr=2E-3"]).optim.lr == 2e-3


@dataclass
class Renamed:
    words: str | None = None
    renamed_keys: ClassVar[dict[str, str]] = {"lexicon": "words"}


@pytest.mark.parametrize("yaml_text, overrides", [("lexicon: w.txt\n", []), ("", ["lexicon=w.txt"])])
def test_renamed_key_names_its_new_name(tmp_path, yaml_text, overrides):
    f = tmp_path / "c.yaml"
    f.write_text(yaml_text)
    with pytest.raises(AsrError) as err:
        config.load(Renamed, f, overrides)
    assert "key 'lexicon' was renamed to 'words'" in str(err.value) and "\n" not in str(err.value)
    assert config.load(Renamed, None, ["words=w.txt"]).words == "w.txt"
    assert "renamed_keys" not in config.to_dict(Renamed())  # a ClassVar, not a key


def test_missing_file(tmp_path):
    with pytest.raises(AsrError, match="no such config file"):
        config.load(Top, tmp_path / "nope.yaml")


def _conf_class(path: Path):
    """The dataclass each shipped config is for, decided by its file name."""
    name = path.stem
    if name.startswith(("fbank", "mfcc", "whisper")):
        from asr.features import FeatureConfig
        return FeatureConfig
    if name.startswith(("blstm", "train", "specaug")):
        from asr.train import TrainConfig
        return TrainConfig
    if name.startswith("decode"):
        from asr.decoders import DecodeConfig
        return DecodeConfig
    return None


CONFS = sorted((Path(__file__).resolve().parents[1] / "conf").glob("*.yaml")) + sorted(
    (Path(__file__).resolve().parents[1] / "egs").glob("*/conf/*.yaml"))


@pytest.mark.parametrize("path", CONFS, ids=[str(p.relative_to(p.parents[2])) for p in CONFS])
def test_every_shipped_config_loads(path):
    cls = _conf_class(path)
    if cls is None:
        pytest.fail(f"{path}: no dataclass known for this config name; add it to _conf_class")
    config.load(cls, path)
