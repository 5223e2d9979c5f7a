import pytest
import spconv.pytorch as spconv
import torch

from occbench.models.backbone import SparseBackbone
from occbench.models.voxelize import VoxelGrid, points_to_voxel_rows, voxelize


@pytest.fixture
def two_threads():
    """spconv's CPU scatter races only when torch runs more than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("trial", range(5))
def test_cpu_submanifold_conv_and_its_backward_match_dense_conv(two_threads, trial):
    """spconv runs backward on CPU and, with several threads, still gives dense conv3d's numbers
    (spconv_compat: unpatched, 2 threads give errors up to 0.5 in most runs)."""
    import occbench.models  # noqa: F401  (applies the CPU patches)

    torch.manual_seed(trial)
    shape = (6, 7, 8)
    coords = torch.stack(torch.meshgrid(*[torch.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    coords = coords[torch.randperm(len(coords))[:120]]
    indices = torch.cat([torch.zeros(len(coords), 1, dtype=torch.long), coords], 1).int()
    features = torch.randn(len(coords), 3, dtype=torch.float64, requires_grad=True)
    conv = spconv.SubMConv3d(3, 4, 3, padding=1, bias=False).double()
    out = conv(spconv.SparseConvTensor(features, indices, list(shape), 1))
    (out.features ** 2).sum().backward()

    dense_features = features.detach().clone().requires_grad_(True)
    dense_in = torch.zeros(*shape, 3, dtype=torch.float64).index_put(
        tuple(coords.T.long()), dense_features).permute(3, 0, 1, 2)
    weight = conv.weight.detach().permute(0, 4, 1, 2, 3)  # spconv (out, k, k, k, in) -> (out, in, k, k, k)
    dense_out = torch.nn.functional.conv3d(dense_in[None], weight, padding=1)
    at_sites = dense_out[0, :, coords[:, 0], coords[:, 1], coords[:, 2]].T
    (at_sites ** 2).sum().backward()
    assert torch.allclose(out.features, at_sites, atol=1e-12)
    assert torch.allclose(features.grad, dense_features.grad, atol=1e-10)


def test_backbone_gives_one_feature_per_input_voxel_and_a_bev_map(tiny_backbone_batch):
    backbone, batch, voxels = tiny_backbone_batch
    output = backbone(voxels, with_bev=True)
    assert torch.equal(output.voxel_features.indices, voxels.indices)
    assert output.voxel_features.features.shape == (len(voxels.indices), backbone.out_channels)
    z, y, x = backbone.grid.spatial_shape
    assert output.bev.shape == (len(batch), backbone.bev_channels, (y + 3) // 4, (x + 3) // 4)


def test_voxelize_means_points_and_maps_every_point_back():
    grid = VoxelGrid((0.0, 0.0, 0.0, 4.0, 4.0, 4.0), (1.0, 1.0, 1.0))
    points = torch.tensor([[0.2, 0.2, 0.2], [0.8, 0.6, 0.4], [2.5, 0.5, 0.5], [9.0, 0.5, 0.5]])
    intensity = torch.tensor([0.0, 1.0, 0.5, 0.5])
    voxels = voxelize([points], [intensity], grid)
    assert voxels.indices.tolist() == [[0, 0, 0, 0], [0, 0, 0, 2]]  # batch, z, y, x
    assert torch.allclose(voxels.features[0], torch.tensor([0.5, 0.4, 0.3, 0.5]))
    assert voxels.point_voxel[0].tolist() == [0, 0, 1, -1]
    # the out-of-range point takes its nearest voxel when carried back
    assert points_to_voxel_rows(voxels, [points], grid)[0].tolist() == [0, 0, 1, 1]


def test_small_and_base_backbones_differ_only_in_width(smoke):
    small = SparseBackbone.from_params(smoke, "small")
    base = SparseBackbone.from_params(smoke, "base")
    assert small.state_dict().keys() == base.state_dict().keys()
    assert sum(p.numel() for p in base.parameters()) > 2 * sum(p.numel() for p in small.parameters())
