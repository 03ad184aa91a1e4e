"""shear-graph: structured pruning of language models over one traced graph."""
from .errors import (
    CalibrationOverlapError, CheckpointError, EvalDataError, PlanError, ShearGraphError, TraceError,
    UnsupportedOpError,
)
from .groups import AttentionInfo, ParamSlice, RemovalGroup, find_groups, group_counts
from .trace import ShearGraph, trace

__all__ = [
    "trace", "ShearGraph", "find_groups", "group_counts", "RemovalGroup", "ParamSlice",
    "AttentionInfo", "ShearGraphError", "TraceError", "UnsupportedOpError", "PlanError",
    "CheckpointError", "EvalDataError", "CalibrationOverlapError",
]
from .checkpoint import load_pruned, save_pruned  # noqa: E402
from .plan import GroupRemoval, PrunePlan, count_params, plan_by_magnitude  # noqa: E402
from .prune import apply_plan, mask_plan  # noqa: E402

__all__ += ["PrunePlan", "GroupRemoval", "plan_by_magnitude", "count_params", "apply_plan", "mask_plan",
            "save_pruned", "load_pruned"]
from .queries import groups_of_param, module_neighbors, module_nodes, path_between  # noqa: E402

__all__ += ["module_nodes", "module_neighbors", "groups_of_param", "path_between"]
from .evaluation import EvalReport, TaskResult, evaluate, lm_eval_model  # noqa: E402
from .tasks import register_task  # noqa: E402

__all__ += ["evaluate", "EvalReport", "TaskResult", "lm_eval_model", "register_task"]
