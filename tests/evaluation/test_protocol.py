from pathlib import Path

from evaluation.extractors import FidelityExtractor
from evaluation.protocol import evaluation_protocol, protocol_fingerprint
from ldm.config import Override, load_config

DOMAIN = FidelityExtractor(name="domain", fidelity_name="ldm-domain", weights_path=Path("w.pt"),
                           weights="domain-cnn:w", cache_tag="abc", feature_dim=64, resize="bilinear-antialias")


def fingerprint(*overrides: Override, extractor: FidelityExtractor = DOMAIN, num_reference: int = 20) -> str:
    cfg = load_config(preset="micro", overrides=list(overrides))
    return protocol_fingerprint(evaluation_protocol(cfg, [extractor], num_reference))


def test_training_fields_leave_the_fingerprint_alone() -> None:
    base = fingerprint()
    assert len(base) == 12 and int(base, 16) >= 0
    assert fingerprint(Override("training.seed", 7), Override("training.diffusion.steps", 3),
                       Override("training.diffusion.lr", 1e-3)) == base


def test_what_fixes_the_samples_or_their_scoring_changes_it() -> None:
    base = fingerprint()
    changed = [
        fingerprint(Override("evaluation.num_samples", 30)),
        fingerprint(Override("diffusion.sampling.steps", 3)),
        fingerprint(Override("diffusion.sampling.sampler", "ddpm")),
        fingerprint(Override("evaluation.seed", 1)),
        fingerprint(num_reference=40),
        fingerprint(extractor=FidelityExtractor(**{**DOMAIN.__dict__, "cache_tag": "def"})),
        fingerprint(extractor=FidelityExtractor(**{**DOMAIN.__dict__, "resize": "nearest"})),
    ]
    assert base not in changed and len(set(changed)) == len(changed)
