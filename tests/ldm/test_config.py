"""ExperimentConfig: round-trips, overrides, hashing and every validation message."""

import re
from pathlib import Path

import pytest
import yaml

from ldm.config import (
    DataConfig,
    ExperimentConfig,
    Override,
    build_config,
    load_config,
    parse_overrides,
    preset_dict,
    preset_names,
)
from ldm.data.catalog import DatasetName
from ldm.errors import ConfigError


def test_defaults_validate_and_presets_load() -> None:
    ExperimentConfig()
    assert {"micro", "tiny", "mnist", "shapes", "paper-f4"} <= set(preset_names())
    for name in preset_names():
        cfg = load_config(preset=name)
        assert cfg.name == name


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = load_config(preset="shapes", overrides=parse_overrides(["autoencoder.f=8", "diffusion.schedule=cosine"]))
    path = tmp_path / "c.yaml"
    cfg.save(path)
    again = load_config(path)
    assert again == cfg
    assert again.config_hash() == cfg.config_hash()
    assert not list(tmp_path.glob(".*tmp"))


def test_overrides_parse_yaml_values() -> None:
    cfg = load_config(preset="mnist", overrides=parse_overrides([
        "autoencoder.f=8", "autoencoder.channel_mult=[1, 2]", "diffusion.min_snr_gamma=5",
        "training.autoencoder.ema_decay=null", "diffusion.zero_terminal_snr=true",
        "diffusion.prediction=v_prediction"]))
    assert cfg.autoencoder.f == 8
    assert cfg.autoencoder.channel_mult == [1, 2]
    assert cfg.diffusion.min_snr_gamma == 5.0
    assert cfg.training.autoencoder.ema_decay is None
    assert cfg.diffusion.zero_terminal_snr is True


def test_hash_ignores_paths_tracking_and_name_but_not_semantics() -> None:
    base = load_config()
    same = load_config(overrides=parse_overrides(["data.root=/elsewhere", "tracking.enabled=false", "name=other",
                                  "tracking.log_checkpoints=all", "training.num_workers=4", "data.download=true"]))
    assert same.config_hash() == base.config_hash()
    different = load_config(overrides=parse_overrides(["diffusion.schedule=cosine"]))
    assert different.config_hash() != base.config_hash()
    # the first stage does not depend on the diffusion settings, only on data + autoencoder + its training
    assert different.first_stage_hash() == base.first_stage_hash()
    wider = load_config(overrides=parse_overrides(["autoencoder.latent_channels=8"]))
    assert wider.first_stage_hash() != base.first_stage_hash()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["autoencoder.f=3"], "autoencoder.f=3 is not a power of two; allowed: 1, 2, 4, 8"),
        (["autoencoder.f=16"], "autoencoder.f=16 is too large for data.resolution=32"),
        (["data.resolution=24", "autoencoder.f=8"], "allowed f: 1, 2"),
        (["autoencoder.latent_channels=0"], "autoencoder.latent_channels=0"),
        (["autoencoder.regularizer=vq", "autoencoder.codebook_size=1"],
         "autoencoder.codebook_size=1 is too small; allowed: >= 2"),
        (["diffusion.conditioning=concat"],
         "diffusion.conditioning='concat' needs a mask per image, but dataset 'mnist' provides: caption, label"),
        (["data.name=celeba", "diffusion.conditioning=class"],
         "needs a label per image, but dataset 'celeba' provides: images only"),
        (["diffusion.schedule=quadratic"],
         "diffusion.schedule='quadratic' is not allowed; allowed: 'linear', 'scaled_linear', 'cosine' or 'sigmoid'"),
        (["diffusion.prediction=x0"], "diffusion.prediction='x0' is not allowed"),
        (["autoencoder.bogus=1"], "unknown field 'autoencoder.bogus'"),
        (["diffusion.beta_start=0.1", "diffusion.beta_end=0.01"], "diffusion.beta_start=0.1 must be below"),
        (["diffusion.zero_terminal_snr=true"], "diffusion.zero_terminal_snr=true needs diffusion.prediction"),
        (["diffusion.unet.num_heads=3"], "diffusion.unet.num_heads=3 must divide every UNet level width"),
        (["diffusion.text.heads=5"], "diffusion.text.heads=5 must divide diffusion.unet.context_dim=128"),
        (["diffusion.sampling.eta=2"], "diffusion.sampling.eta=2"),
        (["diffusion.timesteps=100", "diffusion.sampling.steps=200"],
         "diffusion.sampling.steps=200 exceeds diffusion.timesteps=100; allowed: 1..100"),
        (["oops"], "override 'oops' is not of the form section.field=value"),
        (["autoencoder.f.x=1"], "'f' is a value, not a section"),
    ],
)
def test_validation_messages(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(preset="mnist", overrides=parse_overrides(overrides))
    assert message in str(err.value)


def test_conditioning_allowed_where_dataset_provides_it() -> None:
    for preset, conditioning in [("shapes", "concat"), ("mnist", "class")]:
        cfg = load_config(preset=preset, overrides=[Override("diffusion.conditioning", conditioning)])
        assert cfg.diffusion.conditioning == conditioning


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="unknown preset 'nope'; allowed: micro, mnist"):
        preset_dict("nope")
    with pytest.raises(ConfigError, match="either a config file or a preset"):
        load_config(bad, preset="tiny")


@pytest.mark.parametrize("text, message", [
    ("", "config file '{path}' is empty; allowed: a mapping of sections (name, data, autoencoder"),
    ("training:\n  seed: 1\n  diffusion: {steps: 2}\n  seed: 2\n",
     "config file '{path}' is not valid YAML: line 4, column 3: duplicate key 'seed' (first at line 2)"),
])
def test_empty_files_and_repeated_keys_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(message.format(path=path))


def test_override_values_refuse_bad_yaml_and_repeated_keys() -> None:
    with pytest.raises(ConfigError, match=r"^override 'data=\{a: 1, a: 2\}' is not valid YAML: .*duplicate key 'a'"):
        Override.parse("data={a: 1, a: 2}")
    with pytest.raises(ConfigError, match=r"^override 'name=\[1' is not valid YAML: line 1"):
        Override.parse("name=[1")


def test_build_config_does_not_mutate_base() -> None:
    base = yaml.safe_load(ExperimentConfig().to_yaml())
    build_config(base, parse_overrides(["autoencoder.f=8"]))
    assert base["autoencoder"]["f"] == 4


@pytest.mark.parametrize(("path", "value"), [
    ("data.root", Path("/mnt/runs: 2024/images")),  # as YAML text: a mapping {'/mnt/runs': '2024/images'}
    ("name", "null"),  # as YAML text: None
    ("name", "true"),  # as YAML text: a bool
])
def test_typed_overrides_keep_values_the_text_form_would_change(path: str, value: object) -> None:
    cfg = build_config({}, [Override(path, value)])
    assert (cfg.data.root if path == "data.root" else cfg.name) == value
    with pytest.raises(ConfigError, match=rf"^{re.escape(path)}="):
        build_config({}, [Override.parse(f"{path}={value}")])


def test_override_text_is_parsed_once_and_named_in_errors() -> None:
    assert Override.parse("autoencoder.channel_mult=[1, 2]") == Override("autoencoder.channel_mult", [1, 2])
    assert Override.parse(" training.autoencoder.ema_decay =") == Override("training.autoencoder.ema_decay", None)
    assert str(Override("data.name", "shapes")) == "data.name=shapes"
    assert str(Override("autoencoder.channel_mult", [1, 2])) == "autoencoder.channel_mult=[1, 2]"
    with pytest.raises(ConfigError, match=r"^override 'autoencoder\.f\.x=1': 'f' is a value, not a section$"):
        build_config(ExperimentConfig().model_dump(mode="json"), [Override("autoencoder.f.x", 1)])


def test_data_identity_keeps_the_root_only_where_it_is_the_data() -> None:
    def identity(name: DatasetName, root: str) -> dict[str, object]:
        return DataConfig(name=name, root=Path(root)).identity()

    own_files: tuple[DatasetName, ...] = ("folder", "webdataset")
    for own in own_files:
        assert identity(own, "/a") != identity(own, "/b")
    assert identity("mnist", "/a") == identity("mnist", "/b")


def test_a_folder_of_other_images_is_another_experiment_and_first_stage() -> None:
    def hashes(name: str, root: str) -> tuple[str, str]:
        cfg = load_config(preset="tiny", overrides=[Override("data.name", name), Override("data.root", root)])
        return cfg.config_hash(), cfg.first_stage_hash()

    assert hashes("folder", "/data/faces") != hashes("folder", "/data/cars")
    assert hashes("mnist", "/data/a") == hashes("mnist", "/data/b")  # only where MNIST is kept
