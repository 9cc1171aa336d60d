"""Bad inputs through the real CLI: every one is a single `Error:` line naming the value and what is allowed.

Each case runs `ldm --workdir <fresh empty folder> ...` in a process of its own (forked from one process that
imported the CLI once, see forked_cli.py) and must exit 1 (a UserError) or 2 (a parser error) with exactly one
non-empty stderr line, no traceback anywhere, and nothing left in the work folder or the current folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from ldm.config import ExperimentConfig

HERE = Path(__file__).resolve().parent
SPEC = {"name": "s", "base": {"preset": "tiny"}, "sampler": "grid", "objectives": [{"metric": "fid_domain"}],
        "space": {"autoencoder.f": {"type": "categorical", "choices": [2, 4]}}}


def spec_text(drop: tuple[str, ...] = (), **changes: object) -> str:
    return yaml.safe_dump({**{k: v for k, v in SPEC.items() if k not in drop}, **changes})


# Input files, written once under {in}.
TEXT_FILES: dict[str, str] = {
    "config/empty.yaml": "",
    "config/comment.yaml": "# nothing here yet\n",
    "config/dup.yaml": "data:\n  resolution: 32\nautoencoder: {f: 2}\ndata:\n  resolution: 64\n",
    "config/dup_nested.yaml": "training:\n  diffusion:\n    lr: 0.001\n    lr: 0.01\n",
    "config/not_yaml.yaml": "data: [resolution: 32\n",
    "config/list.yaml": "- data\n- autoencoder\n",
    "config/scalar.yaml": "42\n",
    "config/unknown_key.yaml": "data: {nmae: mnist}\n",
    "config/unknown_section.yaml": "daat: {name: mnist}\n",
    "config/wrong_type.yaml": "data: {resolution: big}\n",
    "config/section_scalar.yaml": "data: 5\n",
    "config/not_power_of_two.yaml": "autoencoder: {f: 3}\n",
    "config/bad_choice.yaml": "diffusion: {schedule: quadratic}\n",
    "config/out_of_range.yaml": "data: {val_fraction: 0.9}\n",
    "config/f_too_large.yaml": "data: {resolution: 32}\nautoencoder: {f: 16}\n",
    "spec/empty.yaml": "",
    "spec/dup.yaml": spec_text() + "sampler: tpe\n",
    "spec/not_yaml.yaml": "name: s\nspace: {autoencoder.f: [\n",
    "spec/list.yaml": "- name\n",
    "spec/no_objectives.yaml": spec_text(drop=("objectives",)),
    "spec/no_choices.yaml": spec_text(space={"autoencoder.f": {"type": "categorical"}}),
    "spec/no_type.yaml": spec_text(space={"autoencoder.f": {"choices": [2, 4]}}),
    "spec/bad_type.yaml": spec_text(space={"autoencoder.f": {"type": "normal", "choices": [2, 4]}}),
    "spec/unknown_field.yaml": spec_text(nmae="x"),
    "spec/unknown_metric.yaml": spec_text(objectives=[{"metric": "fid_domian"}]),
    "spec/bad_direction.yaml": spec_text(objectives=[{"metric": "fid_domain", "direction": "maximize"}]),
    "spec/bad_sampler.yaml": spec_text(sampler="annealing"),
    "spec/unknown_path.yaml": spec_text(space={"autoencoder.ff": {"type": "categorical", "choices": [2]}}),
    "spec/bad_choice_value.yaml": spec_text(space={"autoencoder.f": {"type": "categorical", "choices": [2, 3]}}),
    "spec/grid_of_floats.yaml": spec_text(space={"autoencoder.kl_weight": {"type": "float", "low": 0.1, "high": 1}}),
    "spec/low_above_high.yaml": spec_text(sampler="random", n_trials=2,
                                          space={"autoencoder.latent_channels": {"type": "int", "low": 4, "high": 2}}),
    "spec/too_many_trials.yaml": spec_text(n_trials=5),
    "spec/bad_name.yaml": spec_text(name="a/b"),
    "spec/repeated_seeds.yaml": spec_text(seeds=[0, 0]),
    "spec/missing_config.yaml": spec_text(base={"config": "nowhere.yaml"}),
    "spec/empty_config.yaml": spec_text(base={"config": "../config/empty.yaml"}),
    "spec/no_budget.yaml": spec_text(sampler="tpe"),
    "text.pt": "this is not a checkpoint\n",
    **{f"images/bad/broken{i}.png": "not a png" for i in range(20)},
    "captions/a.png": "",
    "captions/captions.csv": "name,text\na.png,a cat\n",
    "mask.txt": "not an image\n",
}


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    code: int
    fragment: str  # part of the Error line: the bad value and a word of what is allowed

    @property
    def param(self):  # type: ignore[no-untyped-def]
        return pytest.param(self, id=self.id)


def case(id: str, args: str, code: int, fragment: str) -> Case:
    return Case(id, tuple(shlex.split(args)), code, fragment)


CASES = [
    # configs
    case("config-empty", "config validate {in}/config/empty.yaml", 1,
         "config/empty.yaml' is empty; allowed: a mapping"),
    case("config-comment-only", "config validate {in}/config/comment.yaml", 1, "comment.yaml' is empty; allowed"),
    case("train-empty-config", "train -c {in}/config/empty.yaml", 1, "config/empty.yaml' is empty; allowed"),
    case("config-duplicate", "config validate {in}/config/dup.yaml", 1,
         "line 4, column 1: duplicate key 'data' (first at line 1); allowed: each key once"),
    case("config-duplicate-nested", "config show -c {in}/config/dup_nested.yaml", 1,
         "line 4, column 5: duplicate key 'lr' (first at line 3); allowed: each key once"),
    case("train-duplicate", "train -c {in}/config/dup.yaml", 1, "duplicate key 'data'"),
    case("config-not-yaml", "config validate {in}/config/not_yaml.yaml", 1, "not_yaml.yaml' is not valid YAML: line"),
    case("config-list", "config validate {in}/config/list.yaml", 1, "must hold a mapping of sections (name, data"),
    case("config-scalar", "config validate {in}/config/scalar.yaml", 1, "must hold a mapping of sections"),
    case("config-missing", "config validate {in}/config/nowhere.yaml", 1, "nowhere.yaml' does not exist"),
    case("config-directory", "config validate {in}/config", 1, "config' is a folder; allowed: a YAML file"),
    case("config-unknown-key", "config validate {in}/config/unknown_key.yaml", 1, "unknown field 'data.nmae'"),
    case("config-unknown-section", "config validate {in}/config/unknown_section.yaml", 1, "unknown field 'daat'"),
    case("config-wrong-type", "config validate {in}/config/wrong_type.yaml", 1,
         "data.resolution='big': Input should be a valid integer"),
    case("config-section-scalar", "config validate {in}/config/section_scalar.yaml", 1, "data=5"),
    case("config-not-power-of-two", "config validate {in}/config/not_power_of_two.yaml", 1,
         "autoencoder.f=3 is not a power of two; allowed: 1, 2, 4"),
    case("config-bad-choice", "config validate {in}/config/bad_choice.yaml", 1,
         "diffusion.schedule='quadratic' is not allowed; allowed: 'linear'"),
    case("config-out-of-range", "config validate {in}/config/out_of_range.yaml", 1,
         "data.val_fraction=0.9: Input should be less than 0.5"),
    case("config-f-too-large", "config validate {in}/config/f_too_large.yaml", 1,
         "autoencoder.f=16 is too large for data.resolution=32"),
    case("override-unknown-field", "config show -o autoencoder.ff=2", 1, "unknown field 'autoencoder.ff'"),
    case("override-not-key-value", "config show -o oops", 1, "override 'oops' is not of the form section.field=value"),
    case("override-duplicate", "config show -o 'data={a: 1, a: 2}'", 1,
         "override 'data={a: 1, a: 2}' is not valid YAML: line 1, column 8: duplicate key 'a'"),
    case("override-not-yaml", "config show -o name=[1", 1, "override 'name=[1' is not valid YAML"),
    case("override-wrong-type", "config show -o training.seed=abc", 1, "training.seed='abc'"),
    case("unknown-preset", "config show -p huge", 1, "unknown preset 'huge'; allowed: micro"),
    case("config-and-preset", "config show -c {in}/config/dup.yaml -p tiny", 1, "either a config file or a preset"),
    # sweep specs
    case("spec-empty", "sweep validate {in}/spec/empty.yaml", 1,
         "spec/empty.yaml' is empty; allowed: a mapping of name"),
    case("spec-duplicate", "sweep validate {in}/spec/dup.yaml", 1, "duplicate key 'sampler'"),
    case("spec-not-yaml", "sweep validate {in}/spec/not_yaml.yaml", 1, "not_yaml.yaml' is not valid YAML: line"),
    case("spec-list", "sweep validate {in}/spec/list.yaml", 1, "list.yaml' must hold a mapping of name"),
    case("spec-missing", "sweep validate {in}/spec/nowhere.yaml", 1, "is neither a file nor a shipped spec; shipped:"),
    case("spec-no-objectives", "sweep validate {in}/spec/no_objectives.yaml", 1,
         "no_objectives.yaml': objectives: field required"),
    case("spec-no-choices", "sweep validate {in}/spec/no_choices.yaml", 1, "choices: field required"),
    case("spec-no-type", "sweep validate {in}/spec/no_type.yaml", 1, "space.autoencoder.f: field 'type' required"),
    case("spec-bad-type", "sweep validate {in}/spec/bad_type.yaml", 1,
         "space.autoencoder.f.type='normal' is not allowed; allowed: 'categorical', 'int', 'float'"),
    case("spec-unknown-field", "sweep validate {in}/spec/unknown_field.yaml", 1, "unknown field 'nmae'"),
    case("spec-unknown-metric", "sweep validate {in}/spec/unknown_metric.yaml", 1,
         "unknown metric 'fid_domian'; allowed: fid_inception"),
    case("spec-bad-direction", "sweep validate {in}/spec/bad_direction.yaml", 1,
         "metric 'fid_domain' can only be minimized, not maximized"),
    case("spec-bad-sampler", "sweep validate {in}/spec/bad_sampler.yaml", 1,
         "sampler='annealing' is not allowed; allowed: 'grid'"),
    case("spec-unknown-path", "sweep validate {in}/spec/unknown_path.yaml", 1,
         "unknown config field 'autoencoder.ff'; fields of autoencoder: f,"),
    case("spec-bad-choice-value", "sweep validate {in}/spec/bad_choice_value.yaml", 1,
         "autoencoder.f=3 is not a power of two; allowed"),
    case("spec-grid-of-floats", "sweep validate {in}/spec/grid_of_floats.yaml", 1,
         "sampler 'grid' needs categorical params, but space.autoencoder.kl_weight is float"),
    case("spec-low-above-high", "sweep validate {in}/spec/low_above_high.yaml", 1, "low=4 exceeds high=2"),
    case("spec-too-many-trials", "sweep validate {in}/spec/too_many_trials.yaml", 1,
         "n_trials=5 exceeds the grid's 2 points"),
    case("spec-bad-name", "sweep validate {in}/spec/bad_name.yaml", 1, "name='a/b': String should match pattern"),
    case("spec-repeated-seeds", "sweep validate {in}/spec/repeated_seeds.yaml", 1, "seeds=[0, 0] repeat a seed"),
    case("spec-missing-config", "sweep validate {in}/spec/missing_config.yaml", 1, "nowhere.yaml' does not exist"),
    case("spec-empty-config", "sweep validate {in}/spec/empty_config.yaml", 1, "empty.yaml' is empty; allowed"),
    case("spec-no-budget", "sweep validate {in}/spec/no_budget.yaml", 1, "sampler 'tpe' needs n_trials or timeout_s"),
    case("sweep-run-duplicate", "sweep run {in}/spec/dup.yaml", 1, "duplicate key 'sampler'"),
    case("sweep-run-unknown-spec", "sweep run nope", 1, "spec 'nope' is neither a file nor a shipped spec"),
    case("sweep-run-too-many-trials", "sweep run f_ablation --n-trials 99", 1, "n_trials=99 exceeds the grid's"),
    case("sweep-status-unknown-study", "sweep status nope", 1, "nope"),
    # data folders
    case("data-folder-missing", "data show folder -o data.root={in}/nowhere", 1,
         "nowhere' does not exist; point -o data.root=DIR"),
    case("data-folder-empty", "data show folder -o data.root={in}/empty_dir", 1,
         "empty_dir' holds no images; allowed suffixes:"),
    case("data-folder-unreadable", "data show folder -o data.root={in}/images", 1,
         "cannot read image '{in}/images/bad/broken"),
    case("data-folder-is-a-file", "data show folder -o data.root={in}/text.pt", 1, "text.pt'"),
    case("config-not-utf8", "config validate {in}/binary.yaml", 1, "binary.yaml' cannot be read: UnicodeDecodeError"),
    case("report-without-store", "report nope", 1, "no MLflow store at sqlite:"),
    case("report-bad-format", "report nope --format pdf", 1, "pdf"),
    case("ui-bad-port", "ui --port http", 2, "--port=http is not allowed; allowed: an integer"),
    case("data-folder-bad-captions", "data show folder -o data.root={in}/captions", 1,
         "must start with the header 'file,caption'"),
    case("data-unknown-dataset", "data show imagenet", 1, "unknown dataset 'imagenet'; allowed: mnist"),
    case("data-override-not-data", "data show mnist -o autoencoder.f=2", 1, "does not apply to a dataset"),
    case("data-bad-resolution", "data show mnist --resolution 4", 1, "data.resolution=4"),
    # checkpoints
    case("sample-missing-checkpoint", "sample --checkpoint {in}/nowhere.pt", 1, "nowhere.pt' does not exist"),
    case("sample-empty-checkpoint", "sample --checkpoint {in}/empty.pt", 1, "the file is empty (0 bytes)"),
    case("sample-text-checkpoint", "sample --checkpoint {in}/text.pt", 1, "it is not a PyTorch checkpoint"),
    case("sample-object-checkpoint", "sample --checkpoint {in}/object.pt", 1,
         "(argparse.Namespace), so it will not be loaded; allowed: checkpoints of tensors only"),
    case("sample-first-stage-checkpoint", "sample --checkpoint {in}/autoencoder.pt", 1,
         "autoencoder.pt' is a first-stage checkpoint; sampling needs a diffusion checkpoint"),
    case("sample-foreign-dict", "sample --checkpoint {in}/dict.pt", 1, "is not a checkpoint written by `ldm train`"),
    case("eval-missing-checkpoint", "eval --checkpoint {in}/nowhere.pt", 1, "nowhere.pt' does not exist"),
    case("eval-empty-checkpoint", "eval --checkpoint {in}/empty.pt", 1, "the file is empty (0 bytes)"),
    case("eval-text-checkpoint", "eval --checkpoint {in}/text.pt", 1, "it is not a PyTorch checkpoint"),
    case("eval-first-stage-checkpoint", "eval --checkpoint {in}/autoencoder.pt", 1,
         "is a first-stage checkpoint; sampling needs a diffusion checkpoint"),
    case("sample-uri-without-file", "sample --checkpoint runs:/0123abcd", 1,
         "checkpoint URI 'runs:/0123abcd' names no file; e.g. runs:/<run id>/checkpoints/diffusion.pt"),
    case("eval-artifacts-uri-without-server", "eval --checkpoint mlflow-artifacts:/0/abc/artifacts/diffusion.pt", 1,
         "'mlflow-artifacts:/0/abc/artifacts/diffusion.pt' needs the http(s) URI of its `mlflow server`"),
    case("eval-ae-missing-checkpoint", "eval-ae --checkpoint {in}/nowhere.pt", 1, "nowhere.pt' does not exist"),
    case("eval-ae-object-checkpoint", "eval-ae --checkpoint {in}/object.pt", 1, "(argparse.Namespace)"),
    case("eval-ae-unfinished-checkpoint", "eval-ae --checkpoint {in}/unfinished.pt", 1,
         "unfinished.pt' is unfinished (step 3); finish it with"),
    case("train-missing-first-stage", "train --stage diffusion --first-stage {in}/nowhere.pt", 1,
         "nowhere.pt' does not exist"),
    # options
    case("sample-n-zero", "sample --checkpoint {in}/text.pt --n 0", 2, "--n=0 is not allowed; allowed: >= 1"),
    case("sample-steps-text", "sample --checkpoint {in}/text.pt --steps many", 2,
         "--steps=many is not allowed; allowed: an integer"),
    case("sample-bad-sampler", "sample --checkpoint {in}/text.pt --sampler euler", 2,
         "--sampler=euler is not allowed; allowed: 'ddim', 'ddpm'"),
    case("sample-label-and-prompt", "sample --checkpoint {in}/text.pt --label 1 --prompt cat", 1,
         "either --label or --prompt, not both"),
    case("train-bad-stage", "train --stage both", 2, "--stage=both is not allowed; allowed: 'all'"),
    case("train-first-stage-without-diffusion", "train --first-stage {in}/text.pt", 1,
         "--first-stage is used with --stage diffusion only"),
    case("train-retrain-diffusion", "train --stage diffusion --retrain", 1, "--retrain retrains the first stage"),
    case("train-unknown-option", "train --bogus", 2, "--bogus"),
    case("sweep-workers-zero", "sweep run quickstart --workers 0", 2, "--workers=0 is not allowed; allowed: >= 1"),
    case("eval-bad-split", "eval-ae --checkpoint {in}/text.pt --split dev", 2, "--split=dev is not allowed"),
    case("data-bad-split", "data show mnist --split dev", 2, "--split=dev is not allowed; allowed: 'train'"),
    case("eval-bad-extractor", "eval --checkpoint {in}/text.pt --extractor clip", 1,
         "--extractor 'clip' is not a comma-separated list of inception, domain"),
    case("eval-bad-guidance-sweep", "eval --checkpoint {in}/text.pt --guidance-sweep 1,x", 1,
         "--guidance-sweep '1,x' is not a comma-separated list of numbers"),
    case("unknown-command", "trian", 2, "trian"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad-inputs")
    for name, text in TEXT_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "empty_dir").mkdir()
    (root / "empty.pt").touch()
    (root / "binary.yaml").write_bytes(b"data: \xff\xfe\n")
    torch.save({"args": argparse.Namespace(steps=3)}, root / "object.pt")
    torch.save({"weights": torch.zeros(2)}, root / "dict.pt")
    first_stage = {"step": 3, "model": {}, "ema": None, "config": ExperimentConfig().to_yaml()}
    torch.save({**first_stage, "extras": {"scale_factor": 1.0}}, root / "autoencoder.pt")
    torch.save({**first_stage, "extras": {}}, root / "unfinished.pt")
    return root


@pytest.fixture(scope="module")
def cli() -> Iterator[subprocess.Popen]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("MLFLOW_RUN_ID", None)
    server = subprocess.Popen([sys.executable, str(HERE / "forked_cli.py")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    assert json.loads(server.stdout.readline()) == {"ready": True}
    yield server
    server.stdin.close()
    server.wait(timeout=60)


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("case", [c.param for c in CASES])
def test_bad_input_is_one_error_line_and_leaves_nothing_behind(case: Case, cli: subprocess.Popen, inputs: Path,
                                                                tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    before = listing(inputs)
    args = ["--workdir", str(work), *(a.replace("{in}", str(inputs)) for a in case.args)]
    cli.stdin.write(json.dumps({"args": args, "cwd": str(work), "out": str(out)}) + "\n")
    cli.stdin.flush()
    code = json.loads(cli.stdout.readline())["code"]
    stdout, stderr = (out / "stdout").read_text(), (out / "stderr").read_text()
    shown = f"exit {code}\nstdout: {stdout}\nstderr: {stderr}"
    assert "Traceback" not in stdout + stderr, shown
    assert code == case.code, shown
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), shown
    assert case.fragment.replace("{in}", str(inputs)) in lines[0], shown
    assert listing(work) == [], f"left behind: {listing(work)}"
    assert listing(inputs) == before


def test_there_are_at_least_fifty_cases_and_their_names_are_distinct() -> None:
    assert len(CASES) >= 50 and len({c.id for c in CASES}) == len(CASES)
