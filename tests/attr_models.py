"""Small models shared by the attribution tests."""
import torch


class ConvNet(torch.nn.Module):
    """Small 3D conv net: [N, 1, 3, 4, 4] -> [N, 3]."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)
        self.fc = torch.nn.Linear(2 * 3 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class TupleMLP(torch.nn.Module):
    """MLP over a tuple ([N, 3], [N, 2, 3]) with an extra arg (scale) -> [N, 3]."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(9, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))

    def forward(self, a, b, scale):
        return self.net(torch.cat((a, b.flatten(1)), dim=1)) * scale


#: Feature mask with 6 ids for ConvNet inputs [N, 1, 3, 4, 4] (broadcast over dims 1 and 3).
GRID = (torch.arange(3).view(3, 1, 1) * 2 + torch.arange(4).view(1, 1, 4) // 2).view(1, 1, 3, 1, 4)


def assert_close_tree(ours, theirs, atol, rtol):
    """A tensor or a tuple of tensors: same structure, shapes and dtypes, values within atol/rtol."""
    if isinstance(theirs, tuple):
        assert isinstance(ours, tuple) and len(ours) == len(theirs)
        for o, t in zip(ours, theirs):
            assert_close_tree(o, t, atol, rtol)
        return
    assert isinstance(ours, torch.Tensor) and ours.shape == theirs.shape and ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs, atol=atol, rtol=rtol)


def signature_params(func):
    """Names, kinds and defaults (annotations are strings on our side: postponed evaluation)."""
    import inspect

    return [(p.name, p.kind, p.default) for p in inspect.signature(func).parameters.values()]
