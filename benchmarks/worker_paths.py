"""How many images per second the DataLoader workers prepare on each decode path.

On ``extract --decode cpu`` the workers decode each image with PIL and resize it
with PIL to the model's input; on ``--decode hybrid`` they only decode it, and the
device resizes it; on ``--decode gpu`` they only read the file's bytes. This runs
the project's own worker side (``_ItemDataset`` and ``_collate`` of
``clipcache.extract.loop``, parts of 32 images) for each path over the same JPEGs,
for an open_clip ViT's preprocessing (224, bicubic), and counts images per second
from the first part received, alternately, ``--repeats`` times. The peer is the
``cpu`` path; the ratio says how much more the same workers feed on the others::

    python benchmarks/worker_paths.py                          # CIFAR-10 test JPEGs (32 x 32)
    python benchmarks/worker_paths.py --jpeg-size 500x375 --per-class 100

It measures the workers alone: what the main process and the device then do with
the parts (the resize, on the ``hybrid`` and ``gpu`` paths) is not in it. Images
come from ``../shared/data/cifar10-jpg.tar.gz`` as in ``benchmarks/extract_throughput.py``.
"""

from __future__ import annotations

import os
import statistics

from worker_transfer import jpeg_folder, rate, worker_arguments

from clipcache.extract.datasets import open_dataset
from clipcache.extract.loop import _collate, _ItemDataset
from clipcache.extract.plan import build_plans, select_samples
from clipcache.extract.transforms import Preprocess

#: open_clip's ViT preprocessing (224, bicubic, the shortest side), with OpenAI's normalisation.
VIT = Preprocess(224, 224, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711), "bicubic")


def main(argv=None) -> None:
    parser = worker_arguments(__doc__.split("\n")[0], per_class=200)
    parser.add_argument("--paths", default="cpu,hybrid,gpu", help="comma-separated decode paths, the peer first")
    args = parser.parse_args(argv)
    source = jpeg_folder(args)
    (plan,) = build_plans(select_samples(open_dataset(source), max_per_class=args.per_class), views=1,
                          batch_size=args.part, shard=(0, 1))
    paths = args.paths.split(",")
    datasets = {p: _ItemDataset(plan, [VIT], augment=False, seed=0, decode=p) for p in paths}
    runs: dict[str, list[float]] = {p: [] for p in paths}
    for _ in range(args.repeats):
        for p in paths:
            runs[p].append(rate(datasets[p], _collate, args.workers, args.part))
    print(f"{plan.n_items} JPEGs from {source}, {args.workers} workers, parts of {args.part}, {os.cpu_count()} CPUs, "
          f"preprocessing {VIT.image_size} px {VIT.interpolation}")
    peer = statistics.median(runs[paths[0]])
    for p, rates in runs.items():
        median = statistics.median(rates)
        print(f"{p:>7}: {median:9.0f} images/s median ({median / peer:5.2f}x {paths[0]}; runs: "
              f"{', '.join(f'{r:.0f}' for r in rates)})")


if __name__ == "__main__":
    main()
