import torch

from occbench.pretrain.also import FAR, IN, OUT, ALSO, neighbour_pairs, sample_queries


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


def test_neighbour_pairs_are_the_nearest_within_radius():
    latent = torch.tensor([[0.0, 0, 0], [0.5, 0, 0], [0.9, 0, 0], [3.0, 0, 0]])
    queries = torch.tensor([[0.0, 0, 0], [2.9, 0, 0], [10.0, 0, 0]])
    q, l = neighbour_pairs(queries, latent, radius=1.0, max_neighbours=2, chunk=2)
    assert sorted(zip(q.tolist(), l.tolist())) == [(0, 0), (0, 1), (1, 3)]


def test_loss_is_finite_and_reaches_backbone(tiny_backbone_batch):
    backbone, batch, voxels = tiny_backbone_batch
    method = ALSO(backbone, {"queries_per_frame": 96, "hit_offset": 0.1, "radius": 1.0,
                             "max_neighbours": 8, "intensity_weight": 1.0, "hidden_dim": 16})
    loss, logs = method.loss(backbone(voxels), batch, voxels, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and logs["pairs"] > 0
    loss.backward()
    assert backbone.stem[0].weight.grad.abs().sum() > 0
