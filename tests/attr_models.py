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
