"""Seconds that FD-infinity and the bootstrap intervals add to one extractor's evaluation, metric by metric.

Synthetic post-ReLU features stand in for Inception's (the cost depends on N, D and B only): N generated and N
reference rows of D = 2048, 1008 class logits for IS, B resamples. `torch-fidelity` is the point metrics
(`fidelity_scores`: FID, KID, precision/recall, IS) the intervals come on top of.

    python -m bench.eval_intervals                       # N = 500, D = 2048, B = 100
    python -m bench.eval_intervals --n 200 --replicates 50
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import numpy as np
import torch

from evaluation.bootstrap import IscReplicate, KidReplicate, PrcReplicates, resample_indices, seeded_rng
from evaluation.fd_infinity import fd_infinity_interval
from evaluation.features import ISC_SPLITS, ReferenceFeatures, fidelity_scores, metric_kwargs
from evaluation.frechet import FrechetReference, FrechetRows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--replicates", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    generated = {"f": torch.randn(args.n, args.dim, generator=generator).relu(),
                 "logits": torch.randn(args.n, 1008, generator=generator)}
    reference = ReferenceFeatures.of(torch.randn(args.n, args.dim, generator=generator).relu())
    extractor = SimpleNamespace(layer="f", isc_layer="logits", has_isc=True, spec=SimpleNamespace(name="bench"))
    kwargs = metric_kwargs(kid_subset_size=100, seed=0, largest_set=args.n)
    resamples = resample_indices(0, args.n, args.replicates)
    times: dict[str, float] = {}

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        times[name] = time.perf_counter() - start
        return out

    timed("torch-fidelity point metrics", lambda: fidelity_scores(
        generated, reference, extractor, metrics={"fid", "kid", "prc", "isc"}, kid_subset_size=100, seed=0))
    frechet = timed("reference S^1/2 (once per evaluation)", lambda: FrechetReference.of(reference))
    rows = timed("projection X S^1/2 and Gram", lambda: FrechetRows(generated["f"], frechet))
    timed("fid replicates", lambda: [rows.fid(r) for r in resamples])
    timed("fdinf and its interval", lambda: fd_infinity_interval(
        rows, seeded_rng("fd-infinity", 0, args.n).permutation(args.n), resamples))
    kid = timed("kid kernels", lambda: KidReplicate(generated["f"], reference.features, 100, 0))
    timed("kid replicates", lambda: [kid(r) for r in resamples])
    prc = timed("prc distances", lambda: PrcReplicates(generated["f"], reference.features, kwargs["prc_neighborhood"],
                                                       kwargs["prc_batch_size"]))
    timed("precision/recall replicates", lambda: [(prc.precision(r), prc.recall(r)) for r in resamples])
    isc = timed("is softmax", lambda: IscReplicate(generated["logits"], ISC_SPLITS, 0))
    timed("is replicates", lambda: [isc(r) for r in resamples])
    print(f"N={args.n} D={args.dim} B={args.replicates} threads={args.threads}")
    for name, seconds in times.items():
        print(f"{name:<40} {seconds:8.2f} s")
    added = sum(seconds for name, seconds in times.items() if name != "torch-fidelity point metrics")
    print(f"{'added by fdinf and the intervals':<40} {added:8.2f} s")
    print(np.round(list(times.values()), 2).tolist())


if __name__ == "__main__":
    main()
