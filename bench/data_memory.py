"""Peak memory of training on an image folder at two sizes: lazily decoded it stays flat, held in memory it grows.

Folders of random 32x32 RGB PNGs in 10 class sub-folders are written once under `--data` (default
`<workdir>/bench/data_memory`). Each training is both stages of the `micro` preset (4 steps each) on the whole
folder (`data.max_train_items: null`, 32 px, RGB) in a fresh process, with a work folder of its own; the process
reports its peak resident set (getrusage ru_maxrss) and the largest one of its DataLoader workers (VmRSS from
/proc, sampled every 0.1 s; forked workers share most of those pages with the trainer). `lazy` is the folder
dataset as it is (`training.num_workers: null`, i.e. auto); `in-memory` decodes every split into one uint8
tensor first, the path the lazy dataset replaced; `webdataset` trains on the largest folder written as shards
of 1,000 samples (`ldm.data.shards.write_shards`). Also timed, on the largest folder: listing it, the
readability check of `data.skip_bad_files` (Image.open + verify), decoding every file, and indexing its shards,
with a warm page cache.

    python -m bench.data_memory                         # 2,000 and 20,000 images: about 3 minutes on 2 cores
    python -m bench.data_memory --sizes 1000,10000 --data /tmp/folders
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.harness import Report, add_common_arguments, positive_ints, run_script, setup
from ldm.config import DataConfig, Override, Split, load_config
from ldm.paths import resolve_workdir

MODES = ("lazy", "in-memory", "webdataset")
SIDE = 32
CLASSES = 10
_COMPLETE = ".complete"  # written last: a folder without it was interrupted and is written again
_SAMPLE_SECONDS = 0.1
SAMPLES_PER_SHARD = 1000


def shards_of(folder: Path) -> Path:
    """`folder` as WebDataset shards in `<folder>-shards/`, written once."""
    from ldm.data.shards import write_shards

    dest = folder.with_name(f"{folder.name}-shards")
    if not (dest / _COMPLETE).is_file():
        for stale in dest.glob("*.tar"):  # an interrupted write
            stale.unlink()
        write_shards(folder, dest, SAMPLES_PER_SHARD)
        (dest / _COMPLETE).touch()
    return dest


def image_folder(data: Path, count: int) -> Path:
    """`count` random PNGs under `data/images-<count>/class<k>/`, written once."""
    root = data / f"images-{count}"
    if not (root / _COMPLETE).is_file():
        rng = np.random.default_rng(count)
        for i in range(count):
            folder = root / f"class{i % CLASSES}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")
        (root / _COMPLETE).touch()
    return root


def train_once(root: Path, mode: str, threads: int) -> dict[str, float]:
    """Both micro stages on `root` (a folder, or shards in mode webdataset) in this process; returns its peak RSS
    and its workers' in MB."""
    from ldm.data.base import ImageDataset, TensorImageDataset
    from ldm.data.registry import build_dataset
    from ldm.training import autoencoder_stage, diffusion_stage

    torch.set_num_threads(threads)
    overrides = {"data.name": "webdataset" if mode == "webdataset" else "folder", "data.root": str(root),
                 "data.resolution": SIDE, "data.channels": 3, "data.max_train_items": None, "tracking.enabled": False}
    cfg = load_config(preset="micro", overrides=[Override(k, v) for k, v in overrides.items()])

    if mode == "in-memory":
        def in_memory(data: DataConfig, split: Split, workdir: Path) -> ImageDataset:
            lazy = build_dataset(data, split, workdir)
            images = torch.stack([lazy.uint8_image(i) for i in range(len(lazy))])
            return TensorImageDataset(images, source_indices=lazy.source_indices, class_names=lazy.class_names,
                                      labels=lazy.labels, captions=lazy.captions)

        # The stages look the builder up in their own modules; this swaps in the decode-everything path.
        autoencoder_stage.build_dataset = in_memory
        diffusion_stage.build_dataset = in_memory
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir, _ChildrenPeak() as workers:
        first_stage = autoencoder_stage.train_autoencoder(cfg, Path(workdir))
        diffusion_stage.train_diffusion(cfg, Path(workdir), first_stage_ckpt=first_stage)
    # ru_maxrss is in KiB on Linux.
    return {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "workers_rss_mb": workers.peak_mb,
            "seconds": time.perf_counter() - start}


class _ChildrenPeak(threading.Thread):
    """The largest resident set of a child process (DataLoader workers) seen while the block runs, sampled.

    getrusage's RUSAGE_CHILDREN would also count a child that `import torch` starts and ends, which is larger.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_mb, self.stop = 0.0, threading.Event()

    def __enter__(self) -> _ChildrenPeak:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join()

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.wait(_SAMPLE_SECONDS):
            for children in Path(f"/proc/{me}/task").glob("*/children"):
                for pid in children.read_text().split():
                    with contextlib.suppress(OSError):  # a worker that ended between the two reads
                        status = Path(f"/proc/{pid}/status").read_text()
                        kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
                        self.peak_mb = max(self.peak_mb, kib / 1024)


def measure_in_child(root: Path, mode: str, threads: int) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.data_memory", "--child", str(root), "--mode", mode,
               "--threads", str(threads)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def file_costs(root: Path) -> list[dict[str, object]]:
    """Seconds to list folder `root` (first in this process), to check every file as skip_bad_files does and to
    decode every file, and to index the same images as shards."""
    from ldm.data.encoded import EncodedImageDataset
    from ldm.data.folder import index_folder
    from ldm.data import shards as shards_module
    from ldm.data.shards import build_webdataset

    tic = time.perf_counter()
    files = index_folder(root)
    listed = time.perf_counter() - tic
    every = np.arange(len(files))
    tic = time.perf_counter()
    kept = files.readable(every)
    checked = time.perf_counter() - tic
    dataset = EncodedImageDataset(files, every, DataConfig(name="folder", resolution=SIDE, channels=3))
    tic = time.perf_counter()
    for i in range(len(dataset)):
        dataset.uint8_image(i)
    decoded = time.perf_counter() - tic
    shards, indexed = shards_of(root), []
    with tempfile.TemporaryDirectory() as workdir:  # an empty cache, then the one the first build filled
        for _ in range(2):
            shards_module._index.cache_clear()  # the per-process copy: time the listing or the disk cache
            tic = time.perf_counter()
            build_webdataset(DataConfig(name="webdataset", root=shards), "train", Path(workdir))
            indexed.append(time.perf_counter() - tic)
    assert len(kept) == len(files)
    return [{"step": step, "files": len(files), "seconds": round(seconds, 2),
             "us_per_file": round(seconds / len(files) * 1e6, 1)}
            for step, seconds in (("list (os.walk)", listed), ("check (open + verify)", checked),
                                  ("decode + fit (uint8_image)", decoded),
                                  ("index shards (headers, cls)", indexed[0]),
                                  ("index shards, listed before (cache)", indexed[1]))]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, repeats=1, warmup=0)
    parser.add_argument("--sizes", type=positive_ints, default=[2000, 20000], help="images per folder, e.g. 2000,20000")
    parser.add_argument("--data", type=Path, default=None, help="where the folders are written (kept for reruns)")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, default="lazy", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(train_once(args.child, args.mode, args.threads)))
        return 0
    device = setup(args)
    report = Report("data_memory", args, device)
    data = args.data or resolve_workdir(args.workdir) / "bench" / "data_memory"
    roots = {size: image_folder(data, size) for size in args.sizes}
    small, large = min(args.sizes), max(args.sizes)
    costs = file_costs(roots[large])
    runs = [(size, mode) for size in args.sizes for mode in MODES if mode == "lazy" or size == large]
    rows, peaks = [], {}
    for size, mode in runs:
        print(f"training on {size} images, {mode} ...", file=sys.stderr, flush=True)
        root = shards_of(roots[size]) if mode == "webdataset" else roots[size]
        measured = [measure_in_child(root, mode, args.threads) for _ in range(args.repeats)]
        peaks[size, mode] = statistics.median(m["rss_mb"] for m in measured)
        rows.append({"images": size, "mode": mode, "peak_rss_mb": round(peaks[size, mode], 1),
                     "workers_peak_rss_mb": round(statistics.median(m["workers_rss_mb"] for m in measured), 1),
                     "seconds": round(statistics.median(m["seconds"] for m in measured), 1)})
    report.table("Peak RSS of `micro` training (both stages) on a folder of 32x32 PNGs, each in a fresh process",
                 rows)
    if small != large:
        report.details["lazy_rss_ratio"] = peaks[large, "lazy"] / peaks[small, "lazy"]
        report.note(f"lazy peak RSS at {large} / at {small} images: {report.details['lazy_rss_ratio']:.3f}")
    for mode in ("in-memory", "webdataset"):
        report.note(f"{mode} / lazy folder peak RSS at {large} images: {peaks[large, mode] / peaks[large, 'lazy']:.3f}")
    report.table(f"Per-file costs on {large} images (warm page cache)", costs)
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
