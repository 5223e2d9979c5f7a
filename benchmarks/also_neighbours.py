"""ALSO's radius-neighbour search: brute force, a torch hash grid and cKDTree, against the backbone.

On F default-sized synthetic frames (params.yaml's datasets.synthetic, the
first frames of its first scene, subsampled to voxelization.max_points as in
training), samples pretrain.methods.also's queries and times, per frame:
the code ALSO had (cdist through its matrix-product shortcut + top-k), the
brute-force definition ``neighbour_pairs_brute_force`` (exact distances), a
torch hash grid (``hash_grid_pairs`` below: the alternative that was measured
and not kept), ``neighbour_pairs`` (cKDTree, what ALSO uses) and the backbone's
forward pass on the same frame (train mode, no gradient). Checks the hash grid
and cKDTree give the definition's pairs; prints ms per frame (median of R
repeats); asserts nothing about speed.

    python benchmarks/also_neighbours.py [--frames 3] [--repeats 5] [--threads 1] [--device cpu]
                                         [--params params.yaml]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from occbench.config import load_params
from occbench.data.batch import collate, subsample
from occbench.data.converters.synthetic import SyntheticConverter
from occbench.models.backbone import SparseBackbone
from occbench.models.voxelize import voxelize
from occbench.pretrain.also import neighbour_pairs, neighbour_pairs_brute_force, sample_queries

ROOT = Path(__file__).resolve().parents[1]

_CELL_OFFSETS = torch.stack(torch.meshgrid(*[torch.arange(-1, 2)] * 3, indexing="ij"), dim=-1).reshape(-1, 3)


def old_pairs(queries, latent, radius, max_neighbours, chunk=512):
    """ALSO's search before this benchmark: cdist (matrix-product shortcut) + top-k."""
    k = min(max_neighbours, latent.shape[0])
    query_rows, latent_rows = [], []
    for start in range(0, queries.shape[0], chunk):
        distance, nearest = torch.cdist(queries[start:start + chunk], latent).topk(k, dim=1, largest=False)
        row, column = torch.nonzero(distance <= radius, as_tuple=True)
        query_rows.append(row + start)
        latent_rows.append(nearest[row, column])
    return torch.cat(query_rows), torch.cat(latent_rows)


def hash_grid_pairs(queries, latent, radius, max_neighbours):
    """Torch-only alternative: cells a hair over the radius, candidates from the 27 cells, exact top-k."""
    device = queries.device
    cell = radius * (1.0 + 1e-4)
    lower = torch.minimum(queries.min(dim=0).values, latent.min(dim=0).values)
    query_cells = torch.floor((queries - lower) / cell).long() + 1
    latent_cells = torch.floor((latent - lower) / cell).long() + 1
    dims = torch.maximum(query_cells.max(dim=0).values, latent_cells.max(dim=0).values) + 2

    def key(cells):
        return (cells[..., 0] * dims[1] + cells[..., 1]) * dims[2] + cells[..., 2]

    latent_keys, order = key(latent_cells).sort()
    cell_keys, cell_counts = torch.unique_consecutive(latent_keys, return_counts=True)
    cell_starts = torch.cumsum(cell_counts, 0) - cell_counts
    wanted = key(query_cells[:, None, :] + _CELL_OFFSETS.to(device)[None])
    slot = torch.searchsorted(cell_keys, wanted).clamp_max(cell_keys.shape[0] - 1)
    counts = torch.where(cell_keys[slot] == wanted, cell_counts[slot], 0).reshape(-1)
    starts = cell_starts[slot].reshape(-1)
    group = torch.repeat_interleave(torch.arange(counts.shape[0], device=device), counts)
    within = torch.arange(group.shape[0], device=device) - (torch.cumsum(counts, 0) - counts)[group]
    candidate_query = group // _CELL_OFFSETS.shape[0]
    candidate_latent = order[starts[group] + within]
    distance = (queries[candidate_query] - latent[candidate_latent]).norm(dim=1)
    inside = distance <= radius
    candidate_query, candidate_latent, distance = candidate_query[inside], candidate_latent[inside], distance[inside]
    by_distance = distance.argsort(stable=True)
    ranked = by_distance[candidate_query[by_distance].argsort(stable=True)]
    candidate_query, candidate_latent = candidate_query[ranked], candidate_latent[ranked]
    per_query = torch.bincount(candidate_query, minlength=queries.shape[0])
    rank = torch.arange(candidate_query.shape[0], device=device) - (torch.cumsum(per_query, 0) - per_query)[candidate_query]
    keep = rank < max_neighbours
    return candidate_query[keep], candidate_latent[keep], int(group.shape[0])


def same_pairs(a, b) -> bool:
    return sorted(zip(a[0].tolist(), a[1].tolist())) == sorted(zip(b[0].tolist(), b[1].tolist()))


def timed(function, repeats: int, device: torch.device) -> float:
    """Median wall milliseconds of ``function()`` over ``repeats`` calls, after one warm-up."""
    function()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    params = load_params(args.params)
    settings = params["pretrain"]["methods"]["also"]
    converter = SyntheticConverter(params["datasets"]["synthetic"])
    frames = [converter.load(source) for source in converter.sources()[:args.frames]]
    torch.manual_seed(0)
    backbone = SparseBackbone.from_params(params, "small").to(device).train()
    generator = torch.Generator().manual_seed(0)
    rows = []
    for number, frame in enumerate(frames):
        batch = collate([(str(number), subsample(frame, params["voxelization"]["max_points"], np.random.default_rng(number)))])
        points, intensity = batch.points[0].to(device), batch.intensity[0].to(device)
        origin = batch.origins[0].to(device)
        voxels = voxelize([points], [intensity], backbone.grid)
        latent = points[voxels.point_voxel[0] >= 0]
        queries = sample_queries(points, intensity, origin, settings["queries_per_frame"],
                                 settings["hit_offset"], generator).xyz
        radius, k = settings["radius"], settings["max_neighbours"]
        reference = neighbour_pairs_brute_force(queries, latent, radius, k)
        grid = hash_grid_pairs(queries, latent, radius, k)
        new = neighbour_pairs(queries, latent, radius, k)

        def forward():
            with torch.no_grad():
                backbone(voxels)

        rows.append({
            "points": points.shape[0], "voxels": voxels.indices.shape[0], "pairs": int(new[0].numel()),
            "grid candidates": grid[2], "same": same_pairs(reference, new) and same_pairs(reference, grid[:2]),
            "old": timed(lambda: old_pairs(queries, latent, radius, k), args.repeats, device),
            "brute": timed(lambda: neighbour_pairs_brute_force(queries, latent, radius, k), args.repeats, device),
            "grid": timed(lambda: hash_grid_pairs(queries, latent, radius, k), args.repeats, device),
            "kdtree": timed(lambda: neighbour_pairs(queries, latent, radius, k), args.repeats, device),
            "backbone": timed(forward, args.repeats, device),
        })
    print(f"device {device}, {args.threads} thread(s); {settings['queries_per_frame']} queries, "
          f"radius {settings['radius']} m, max_neighbours {settings['max_neighbours']}; ms per frame")
    print(" ".join(f"{name:>15s}" for name in rows[0]))
    for row in rows:
        print(" ".join(f"{value:15.1f}" if isinstance(value, float) else f"{str(value):>15s}" for value in row.values()))
    mean = {name: statistics.mean(row[name] for row in rows) for name in ("old", "brute", "grid", "kdtree", "backbone")}
    print(f"mean ms per frame: old {mean['old']:.1f}, brute force {mean['brute']:.1f}, hash grid {mean['grid']:.1f}, "
          f"cKDTree {mean['kdtree']:.1f}, backbone forward {mean['backbone']:.1f}")
    print(f"cKDTree is {mean['old'] / mean['kdtree']:.1f}x faster than old; old was {mean['old'] / mean['backbone']:.2f}x "
          f"and cKDTree is {mean['kdtree'] / mean['backbone']:.2f}x the backbone forward; "
          f"all frames same pairs as brute force: {all(row['same'] for row in rows)}")

if __name__ == "__main__":
    main()
