"""mmxai_fast.profiling and ``mmxai-fast profile``: model time from global hooks, phases that add
up to the wall time, Chrome trace, PNG."""
from __future__ import annotations

import json

import pytest
import torch

from mmxai_fast.attr import ShapleyValueSampling
from mmxai_fast.cli import main
from mmxai_fast.profiling import PHASES, phase, profile_attributions


class _Counting(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv3d(2, 3, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2))
        self.calls = self.examples = 0

    def forward(self, x):
        self.calls += 1
        self.examples += x.shape[0]
        return self.net(x)


@pytest.mark.parametrize("script", [False, True])
def test_profile_attributions_times_every_model_call_of_an_unmodified_attribute_call(tmp_path, script):
    torch.manual_seed(0)
    counting = _Counting().eval()
    model = torch.jit.script(counting) if script else counting
    x = torch.randn(1, 2, 6, 6, 6)
    mask = (torch.arange(216).reshape(6, 6, 6) // 54).expand(1, 2, 6, 6, 6).contiguous()
    trace = tmp_path / "trace.json"
    with profile_attributions(trace=str(trace)) as prof:
        ShapleyValueSampling(model).attribute(x, target=1, feature_mask=mask, n_samples=3)
    if not script:  # the hooks see exactly the model's own calls (nested modules are not counted)
        assert (prof.model_calls, prof.model_examples) == (counting.calls, counting.examples)
    assert prof.model_calls >= 2 and prof.model_examples >= 3 * 3  # at least 3 new coalitions per permutation
    assert 0 < prof.model_s < prof.wall_s
    assert set(prof.phases) == set(PHASES)
    assert sum(prof.phases.values()) == pytest.approx(prof.wall_s, rel=1e-6)
    assert prof.phases["perturb"] > 0  # the engine's perturbation ops were seen
    events = json.loads(trace.read_text())
    names = {e.get("name") for e in events["traceEvents"]}
    assert "mmxai.model" in names
    report = prof.report()
    assert "evaluations/s" in report and "model" in report and "top ops" in report
    prof.save_png(str(tmp_path / "b.png"))
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_phase_ranges_are_counted_and_hooks_are_removed():
    with profile_attributions() as prof:
        with phase("accumulate"):
            torch.ones(1000).cumsum(0)
    assert prof.phases["accumulate"] > 0 and prof.model_calls == 0
    with profile_attributions(use_profiler=False) as quiet:
        pass
    torch.nn.Linear(2, 2)(torch.ones(1, 2))  # after the block: not counted anywhere
    assert quiet.model_calls == 0 and prof.model_calls == 0
    with pytest.raises(ValueError, match="trace needs use_profiler=True"):
        with profile_attributions(trace="x.json", use_profiler=False):
            pass


def test_profile_cli_on_the_phantom_writes_trace_png_and_json(tmp_path, capsys):
    paths = {k: tmp_path / f"p.{k}" for k in ("json", "png")}
    trace = tmp_path / "trace.json"
    assert main(["profile", "--phantom-size", "24", "--n-samples", "2", "--n-segments", "4", "--trace", str(trace),
                 "--png", str(paths["png"]), "--json", str(paths["json"])]) == 0
    out = capsys.readouterr().out
    assert "profile: ShapleyValueSampling on a 4x24x24x24 case" in out and "evaluations/s" in out
    summary = json.loads(paths["json"].read_text())
    assert summary["model_calls"] > 0 and 0 < summary["model_share"] < 1
    assert paths["png"].read_bytes()[:4] == b"\x89PNG" and trace.stat().st_size > 0
    with pytest.raises(SystemExit) as exit_info:
        main(["profile", "--phantom-size", "16"])
    assert exit_info.value.code == 2
