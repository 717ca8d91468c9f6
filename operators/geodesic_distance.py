"""Geodesic distance inside a 3D mask: shortest paths through the mask's voxels, in mm.

The femur splitter asks which bone lies too far *along the bone* from the femoral shafts to be femur.
scikit-image's ``MCP_Geometric`` answers that on a dense cost array of the whole bone box, most of it
barrier (the bone is a few per cent of the box), and building that array's neighbour tables costs more
than the search itself. :func:`geodesic_distance` runs the same search on a graph of the mask's voxels
only (scipy's Dijkstra): the same distances, to the last bit (the length of a path is the same sum of
the same step lengths), in about a third of the time on a whole-body bone mask.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

__all__ = ["geodesic_distance"]

#: The 13 neighbour offsets (z, y, x) of the 26-neighbourhood that come after (0, 0, 0) in lexicographic
#: order: every undirected neighbour pair once.
_HALF_NEIGHBOURHOOD = tuple(o for o in itertools.product((-1, 0, 1), repeat=3) if o > (0, 0, 0))


def geodesic_distance(
    mask: np.ndarray, seeds: np.ndarray, spacing: tuple[float, float, float]
) -> np.ndarray:
    """Length (mm) of the shortest path from any seed to each voxel, moving through the mask only.

    Steps go to any of the 26 neighbours and cost their Euclidean length; this is exactly the cumulative
    cost of ``skimage.graph.MCP_Geometric(np.where(mask, 1.0, -1.0), sampling=spacing,
    fully_connected=True).find_costs(seeds)``.

    Parameters
    ----------
    mask:
        bool (z, y, x): the voxels a path may pass through.
    seeds:
        bool (z, y, x), same shape: where paths start (distance 0). Seeds outside ``mask`` are ignored.
    spacing:
        Voxel size (z, y, x) in mm.

    Returns
    -------
    numpy.ndarray
        float64 (z, y, x): the distance in mm; ``inf`` outside the mask and at mask voxels that no path
        from a seed reaches (all of them when there is no seed in the mask).
    """
    mask = np.asarray(mask, dtype=bool)
    seeds = np.asarray(seeds, dtype=bool)
    if mask.ndim != 3 or seeds.shape != mask.shape:
        raise ValueError(f"mask and seeds must be 3D arrays of one shape, got {mask.shape} and {seeds.shape}")
    if len(spacing) != 3 or not all(float(s) > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive sizes in mm, got {spacing!r}")
    out = np.full(mask.shape, np.inf)
    voxels = np.flatnonzero(mask)
    starts_mask = seeds & mask
    if voxels.size == 0 or not starts_mask.any():
        return out
    # Node number of each mask voxel (-1 elsewhere): int32 halves the largest temporaries.
    node_dtype = np.int32 if voxels.size < np.iinfo(np.int32).max else np.int64
    node = np.full(mask.shape, -1, dtype=node_dtype)
    node.flat[voxels] = np.arange(voxels.size, dtype=node_dtype)
    step_mm = np.asarray(spacing, dtype=np.float64)
    rows, cols, lengths = [], [], []
    for offset in _HALF_NEIGHBOURHOOD:
        here = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(offset, mask.shape))
        there = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(offset, mask.shape))
        a, b = node[here], node[there]
        pair = (a >= 0) & (b >= 0)
        count = int(np.count_nonzero(pair))
        if count == 0:
            continue
        rows.append(a[pair])
        cols.append(b[pair])
        lengths.append(np.full(count, np.sqrt(np.sum((np.asarray(offset) * step_mm) ** 2))))
    del node
    if not rows:
        # Isolated voxels only: the seeds are at 0, nothing else is reached.
        out[starts_mask] = 0.0
        return out
    graph = sparse.csr_matrix(
        (np.concatenate(lengths), (np.concatenate(rows), np.concatenate(cols))), shape=(voxels.size, voxels.size)
    )
    del rows, cols, lengths
    starts = np.searchsorted(voxels, np.flatnonzero(starts_mask))
    out.flat[voxels] = csgraph.dijkstra(graph, directed=False, indices=starts, min_only=True)
    return out
