"""Large-scale runs: a whole cohort explained under ``torchrun`` (cases or Shapley permutations
sharded over ranks, GPUs and machines), resumable after a kill at any moment.

- :func:`discover_cases`: BraTS-style folder or CSV -> :class:`CaseSpec` list.
- :func:`run_cohort`: explain every unfinished case; manifest, failures, atomic case folders.
- :func:`sharded_shapley_sampling`: one Shapley attribution, permutations sharded over ranks,
  all_reduce of the sums, checkpointed partial sums.
- :func:`sharded_rows`: Occlusion, FeatureAblation, Lime, KernelShap (any engine method) with
  their windows / features / coalitions sharded over ranks, outputs all-reduced.
- :func:`init_distributed`: the process group from torchrun's environment (nccl / gloo).

See ``docs/cohort.md``.
"""
from .case_job import CohortSettings
from .discovery import BRATS_MODALITIES, CaseSpec, discover_cases
from .distributed import Dist, RankFailed, init_distributed
from .manifest import ManifestError, model_weights_hash, open_manifest, read_manifest
from .runner import CohortReport, run_cohort
from .rows import sharded_rows
from .shapley import ShapleyResult, sharded_shapley_sampling
from .sharding import case_seed, permutation_seed, shard

__all__ = ["CohortSettings", "CaseSpec", "BRATS_MODALITIES", "discover_cases", "Dist", "init_distributed",
           "RankFailed", "ManifestError", "model_weights_hash", "open_manifest", "read_manifest", "CohortReport", "run_cohort",
           "ShapleyResult", "sharded_shapley_sampling", "sharded_rows", "case_seed", "permutation_seed", "shard"]
