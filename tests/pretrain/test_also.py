import math
from types import SimpleNamespace

import pytest
import torch

from occbench.data.batch import Batch
from occbench.models.backbone import BackboneOutput
from occbench.models.voxelize import VoxelBatch
from occbench.pretrain.also import (FAR, IN, OUT, ALSO, neighbour_pairs, neighbour_pairs_brute_force,
                                    relative_position, sample_queries)

SETTINGS = {"queries_per_frame": 96, "hit_offset": 0.1, "radius": 1.0, "max_neighbours": 8,
            "intensity_weight": 1.0, "hidden_dim": 16, "relative_frame": "ray", "relative_scale": 0.25}


def _cloud(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
    ranges = 5 + 20 * torch.rand(n, 1, generator=g)
    origin = torch.tensor([0.5, -0.2, 0.1])
    return origin + directions * ranges, torch.rand(n, generator=g), origin


def test_queries_come_in_three_equal_thirds_with_their_labels():
    points, intensity, origin = _cloud()
    queries = sample_queries(points, intensity, origin, num_queries=301, hit_offset=0.1,
                             generator=torch.Generator().manual_seed(1))
    assert queries.xyz.shape == (300, 3)  # 301 // 3 per third
    for kind, occupied in ((IN, 1.0), (OUT, 0.0), (FAR, 0.0)):
        third = queries.kind == kind
        assert int(third.sum()) == 100
        assert torch.all(queries.occupied[third] == occupied)
    assert torch.equal(queries.kind, torch.arange(3).repeat_interleave(100))
    # intensity targets exist for in and out queries only
    assert not torch.isnan(queries.intensity[queries.kind != FAR]).any()
    assert torch.isnan(queries.intensity[queries.kind == FAR]).all()


def test_query_positions_lie_on_the_ray_around_the_hit():
    points, intensity, origin = _cloud()
    generator = torch.Generator().manual_seed(2)
    queries = sample_queries(points, intensity, origin, 3000, 0.1, generator)
    distance = (queries.xyz - origin).norm(dim=1)
    # recover each query's hit: nearest point direction from the origin
    unit_points = torch.nn.functional.normalize(points - origin, dim=1)
    unit_queries = torch.nn.functional.normalize(queries.xyz - origin, dim=1)
    hit = (unit_queries @ unit_points.T).argmax(dim=1)
    hit_range = (points[hit] - origin).norm(dim=1)
    assert torch.allclose((unit_queries * unit_points[hit]).sum(1), torch.ones(3000), atol=1e-4)
    behind = distance - hit_range
    assert torch.all((behind[queries.kind == IN] >= -1e-4) & (behind[queries.kind == IN] <= 0.1 + 1e-4))
    assert torch.all((behind[queries.kind == OUT] <= 1e-4) & (behind[queries.kind == OUT] >= -0.1 - 1e-4))
    assert torch.all((distance[queries.kind == FAR] >= 0) & (behind[queries.kind == FAR] <= 1e-4))


def test_same_generator_seed_gives_same_queries():
    points, intensity, origin = _cloud()
    a = sample_queries(points, intensity, origin, 99, 0.1, torch.Generator().manual_seed(5))
    b = sample_queries(points, intensity, origin, 99, 0.1, torch.Generator().manual_seed(5))
    assert torch.equal(a.xyz, b.xyz)


def test_out_queries_never_pass_behind_the_sensor():
    # one hit 0.05 m from the sensor on +x, hit_offset 0.1: out queries stop at the origin
    origin = torch.tensor([1.0, 2.0, 0.5])
    points = origin + torch.tensor([[0.05, 0.0, 0.0]])
    queries = sample_queries(points, torch.ones(1), origin, 3000, 0.1, torch.Generator().manual_seed(0))
    out = queries.xyz[queries.kind == OUT] - origin
    assert torch.all(out[:, 0] >= 0) and torch.all(out[:, 0] <= 0.05 + 1e-6)
    assert torch.allclose(out[:, 1:], torch.zeros(1000, 2))
    at_origin = (out[:, 0] == 0).float().mean()  # u * 0.1 > 0.05, about half of them
    assert 0.4 < at_origin < 0.6
    # a hit beyond hit_offset keeps the full offset range
    far_hit = origin + torch.tensor([[3.0, 0.0, 0.0]])
    queries = sample_queries(far_hit, torch.ones(1), origin, 3000, 0.1, torch.Generator().manual_seed(0))
    out = queries.xyz[queries.kind == OUT] - origin
    assert out[:, 0].min() < 2.91 and torch.all(out[:, 0] >= 2.9 - 1e-5)


def test_neighbour_pairs_are_the_nearest_within_radius():
    latent = torch.tensor([[0.0, 0, 0], [0.5, 0, 0], [0.9, 0, 0], [3.0, 0, 0]])
    queries = torch.tensor([[0.0, 0, 0], [2.9, 0, 0], [10.0, 0, 0]])
    q, l = neighbour_pairs(queries, latent, radius=1.0, max_neighbours=2)
    assert list(zip(q.tolist(), l.tolist())) == [(0, 0), (0, 1), (1, 3)]  # by query, nearest first
    q, l = neighbour_pairs(queries, latent, radius=1.0, max_neighbours=10)  # k above the latent count
    assert list(zip(q.tolist(), l.tolist())) == [(0, 0), (0, 1), (0, 2), (1, 3)]
    q, l = neighbour_pairs(queries[2:], latent, radius=1.0, max_neighbours=2)
    assert q.numel() == 0 and l.numel() == 0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("radius, max_neighbours", [(1.0, 16), (0.4, 3), (2.5, 1), (3.0, 5000)])
def test_neighbour_pairs_equal_brute_force(seed, radius, max_neighbours):
    g = torch.Generator().manual_seed(seed)
    latent = torch.rand(2000, 3, generator=g) * torch.tensor([12.0, 12.0, 3.0]) - 6
    latent[:500, 2] = -1.7  # a flat ground, as in LiDAR clouds
    queries = torch.rand(400, 3, generator=g) * torch.tensor([14.0, 14.0, 4.0]) - 7
    fast = neighbour_pairs(queries, latent, radius, max_neighbours)
    brute = neighbour_pairs_brute_force(queries, latent, radius, max_neighbours, chunk=128)
    assert fast[0].numel() > 0
    assert sorted(zip(*[t.tolist() for t in fast])) == sorted(zip(*[t.tolist() for t in brute]))


def test_relative_position_in_the_ray_frame():
    origin = torch.tensor([[1.0, 0.0, 0.0]])
    latent = torch.tensor([[1.0, 10.0, 0.0]])  # ray along +y
    query = torch.tensor([[1.3, 10.1, 0.2]])
    assert torch.allclose(relative_position(query, latent, origin, "sensor"), torch.tensor([[0.3, 0.1, 0.2]]))
    # (along the ray, horizontal: up x ray = -x, ray x side = up)
    assert torch.allclose(relative_position(query, latent, origin, "ray"), torch.tensor([[0.1, -0.3, 0.2]]),
                          atol=1e-6)


def _hand_case(relative_frame="sensor"):
    """Two latent points near the sensor (every query reaches both), fixed affine decoder.

    Decoder: logit = feature, intensity = feature / 2 + 0.2, whatever the
    relative position (its weights are 0), so the randomness of the queries
    does not matter: voxel features 1 and -2 give logits 1 and -2 and
    intensities 0.7 and -0.8 on every pair; both points have intensity 0.5.
    """
    method = ALSO(SimpleNamespace(out_channels=1),
                  {**SETTINGS, "queries_per_frame": 3, "hidden_dim": 4, "intensity_weight": 2.0,
                   "relative_frame": relative_frame})
    first, _, second, _, third = method.decoder
    with torch.no_grad():
        for layer in (first, second):
            layer.weight.copy_(torch.eye(4))
        first.bias.fill_(5.0)  # keeps every ReLU input positive: the MLP is affine here
        second.bias.zero_()
        third.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0.5, 0, 0, 0]]))
        third.bias.copy_(torch.tensor([-5.0, -2.5 + 0.2]))
    points = [torch.tensor([[0.3, 0.0, 0.0], [0.5, 0.0, 0.0]])]
    batch = Batch(["frame"], points, [torch.tensor([0.5, 0.5])], [torch.zeros(2, dtype=torch.long)], [torch.zeros(3)])
    voxels = VoxelBatch(torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.int32), [torch.tensor([0, 1])], 1)
    output = BackboneOutput(SimpleNamespace(features=torch.tensor([[1.0], [-2.0]])), {}, None, 4, None)
    return method, output, batch, voxels


def _softplus(z: float) -> float:
    return torch.nn.functional.softplus(torch.tensor(z, dtype=torch.float64)).item()


@pytest.mark.parametrize("relative_frame", ["sensor", "ray"])
def test_loss_equals_bce_plus_weighted_l1_by_hand(relative_frame):
    method, output, batch, voxels = _hand_case(relative_frame)
    loss, logs = method.loss(output, batch, voxels, torch.Generator().manual_seed(0))
    # 3 queries (in, out, far) x 2 latent points = 6 pairs with logits 1 and -2;
    # in is occupied: BCE = softplus(-1) + softplus(2), out and far each softplus(1) + softplus(-2)
    bce = (_softplus(-1) + _softplus(2) + 2 * (_softplus(1) + _softplus(-2))) / 6
    assert bce == pytest.approx(0.8867615159, abs=1e-9)
    # L1 on the 4 in/out pairs (far has no target): |0.7 - 0.5| and |-0.8 - 0.5|, twice
    assert logs["intensity_l1"] == pytest.approx(0.75, abs=1e-6)
    assert logs["occupancy_bce"] == pytest.approx(bce, abs=1e-6)
    assert loss.item() == pytest.approx(bce + 2.0 * 0.75, abs=1e-6)
    assert logs["pairs"] == 6 and logs["occupancy_accuracy"] == pytest.approx(0.5)


def test_pretext_metrics_by_hand():
    method, output, batch, voxels = _hand_case()
    metrics = method.pretext_metrics(output, batch, voxels, torch.Generator().manual_seed(0))
    # pairs: logit 1 (says occupied) and -2 (says empty) for each query -> half of the pairs right
    assert metrics["pair_accuracy"] == pytest.approx(0.5)
    assert metrics["pair_bce"] == pytest.approx(0.8867615, abs=1e-6)
    for kind in ("in", "out", "far"):
        assert metrics[f"pair_accuracy_{kind}"] == pytest.approx(0.5)
        assert metrics[f"pairs_{kind}"] == 2 and metrics[f"queries_{kind}"] == 1
    # queries: mean logit (1 - 2) / 2 = -0.5 says empty: in wrong, out and far right
    assert metrics["query_accuracy"] == pytest.approx(2 / 3)
    assert (metrics["query_accuracy_in"], metrics["query_accuracy_out"], metrics["query_accuracy_far"]) == (0, 1, 1)
    assert metrics["query_coverage"] == 1 and metrics["queries"] == 3 and metrics["pairs"] == 6


def test_pretext_metrics_leave_out_queries_without_neighbours():
    method, output, batch, voxels = _hand_case()
    method.settings = {**method.settings, "radius": 0.15}
    generator_seed = 3  # draws: in query at x = 0.303 and out at 0.253 (hit 0.3 both), far at 0.030
    queries = sample_queries(batch.points[0], batch.intensity[0], batch.origins[0], 3, 0.1,
                             torch.Generator().manual_seed(generator_seed))
    assert torch.allclose(queries.xyz[:, 0], torch.tensor([0.3027, 0.2528, 0.0301]), atol=1e-4)
    metrics = method.pretext_metrics(output, batch, voxels, torch.Generator().manual_seed(generator_seed))
    # in and out reach only the latent point at 0.3 (logit 1: occupied), far reaches none
    assert metrics["pairs"] == 2 and metrics["queries"] == 2
    assert metrics["query_coverage"] == pytest.approx(2 / 3)
    assert metrics["query_accuracy_in"] == 1 and metrics["query_accuracy_out"] == 0
    assert metrics["queries_far"] == 0 and math.isnan(metrics["query_accuracy_far"])
    assert metrics["query_accuracy"] == pytest.approx(0.5)


def test_loss_is_finite_and_reaches_backbone(tiny_backbone_batch):
    backbone, batch, voxels = tiny_backbone_batch
    method = ALSO(backbone, SETTINGS)
    loss, logs = method.loss(backbone(voxels), batch, voxels, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and logs["pairs"] > 0
    loss.backward()
    assert backbone.stem[0].weight.grad.abs().sum() > 0
