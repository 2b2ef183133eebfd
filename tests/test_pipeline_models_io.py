import collections

import pytest
import torch

from mmxai_fast.models import VGG3D
from mmxai_fast.pipeline.models_io import (ModelLoadError, load_state_dict_model, load_torchscript,
                                           parse_factory_kwargs, resolve_factory)

KW = {"in_channels": 2, "widths": [4, 8], "hidden": 8}


class Opaque:
    """Not loadable with weights_only=True."""


def _weights(tmp_path, wrap=lambda sd: sd):
    torch.manual_seed(0)
    model = VGG3D(**KW)
    path = tmp_path / "w.pt"
    torch.save(wrap(model.state_dict()), path)
    return model, path


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("wrap", [lambda sd: sd, lambda sd: {"state_dict": sd, "epoch": 3},
                                  lambda sd: {"model_state_dict": sd},
                                  lambda sd: collections.OrderedDict(("module." + k, v) for k, v in sd.items())])
def test_state_dict_formats(tmp_path, wrap):
    model, path = _weights(tmp_path, wrap)
    loaded = load_state_dict_model(path, "mmxai_fast.models:VGG3D", KW)
    assert _same(model, loaded) and not loaded.training


def test_state_dict_errors(tmp_path):
    _, path = _weights(tmp_path)
    with pytest.raises(ModelLoadError, match="state-dict: .* does not fit the factory's model: .*size mismatch"):
        load_state_dict_model(path, "mmxai_fast.models:VGG3D", {**KW, "widths": [4, 16]})
    with pytest.raises(ModelLoadError, match="state-dict: file .*missing.pt' does not exist"):
        load_state_dict_model(tmp_path / "missing.pt", "mmxai_fast.models:VGG3D", KW)
    torch.save({"weights": Opaque()}, tmp_path / "pickle.pt")
    with pytest.raises(ModelLoadError, match="cannot load .* with weights_only=True"):
        load_state_dict_model(tmp_path / "pickle.pt", "mmxai_fast.models:VGG3D", KW)
    torch.save({"epoch": 3}, tmp_path / "nodict.pt")
    with pytest.raises(ModelLoadError, match="holds no state dict"):
        load_state_dict_model(tmp_path / "nodict.pt", "mmxai_fast.models:VGG3D", KW)


def test_factory_errors(tmp_path):
    _, path = _weights(tmp_path)
    with pytest.raises(ModelLoadError, match="factory must look like 'package.module:callable'"):
        resolve_factory("mmxai_fast.models.VGG3D")
    with pytest.raises(ModelLoadError, match="cannot import module 'no_such_pkg'"):
        resolve_factory("no_such_pkg:make")
    with pytest.raises(ModelLoadError, match="has no attribute 'Nope'"):
        resolve_factory("mmxai_fast.models:Nope")
    with pytest.raises(ModelLoadError, match="is not callable"):
        resolve_factory("mmxai_fast.models:__all__")
    with pytest.raises(ModelLoadError, match="factory: calling VGG3D.* failed"):
        load_state_dict_model(path, "mmxai_fast.models:VGG3D", {"no_such_arg": 1})
    with pytest.raises(ModelLoadError, match="must return a torch.nn.Module"):
        load_state_dict_model(path, lambda: 3)


def test_factory_kwargs_parsing():
    assert parse_factory_kwargs(None) == {} and parse_factory_kwargs('{"a": 1}') == {"a": 1}
    with pytest.raises(ModelLoadError, match="factory-kwargs: not valid JSON"):
        parse_factory_kwargs("{a: 1}")
    with pytest.raises(ModelLoadError, match="factory-kwargs: must be a JSON object"):
        parse_factory_kwargs("[1, 2]")


def test_torchscript(tmp_path):
    torch.manual_seed(0)
    model = VGG3D(**KW).eval()
    torch.jit.save(torch.jit.script(model), tmp_path / "m.pt")
    loaded = load_torchscript(tmp_path / "m.pt")
    x = torch.randn(1, 2, 6, 6, 6)
    torch.testing.assert_close(loaded(x), model(x))
    _, weights = _weights(tmp_path)
    with pytest.raises(ModelLoadError, match="model: .*w.pt' is not a TorchScript file"):
        load_torchscript(weights)
    with pytest.raises(ModelLoadError, match="model: file .* does not exist"):
        load_torchscript(tmp_path / "none.pt")
