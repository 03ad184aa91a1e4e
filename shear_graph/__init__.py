"""shear-graph: structured pruning of language models over one traced graph."""
from .errors import (
    CalibrationOverlapError, CheckpointError, EvalDataError, PlanError, ShearGraphError, TraceError,
    TrainingError, UnsupportedOpError,
)
from .groups import AttentionInfo, ParamSlice, RemovalGroup, find_groups, group_counts
from .trace import ShearGraph, trace

__all__ = [
    "trace", "ShearGraph", "find_groups", "group_counts", "RemovalGroup", "ParamSlice",
    "AttentionInfo", "ShearGraphError", "TraceError", "UnsupportedOpError", "PlanError",
    "CheckpointError", "EvalDataError", "CalibrationOverlapError", "TrainingError",
]
from .checkpoint import load_pruned, save_pruned  # noqa: E402
from .plan import (  # noqa: E402
    GroupRemoval, PrunePlan, count_params, keep_layer_shares, plan_adaptive, plan_by_magnitude, plan_by_saliency,
)
from .prune import apply_plan, mask_plan  # noqa: E402
from .compensate import Compensation, compensate_plan  # noqa: E402

__all__ += ["PrunePlan", "GroupRemoval", "plan_by_magnitude", "plan_by_saliency", "plan_adaptive", "keep_layer_shares",
            "count_params",
            "apply_plan", "mask_plan", "save_pruned", "load_pruned", "compensate_plan", "Compensation"]
from .queries import groups_of_param, module_neighbors, module_nodes, path_between  # noqa: E402
from .explain import Explanation, explain  # noqa: E402

__all__ += ["module_nodes", "module_neighbors", "groups_of_param", "path_between", "explain", "Explanation"]
from .data import Blocks, DataError, DataSplit, Domain, default_domains, domain_from_dataset, domain_from_file, make_blocks  # noqa: E402,E501
from .self_text import domain_from_model  # noqa: E402
from .knowledge import Cluster, KnowledgeMap, analyze_knowledge, held_out_loss  # noqa: E402
from .saliency import SALIENCY, Saliency, compute_saliency, register_saliency  # noqa: E402

__all__ += ["Domain", "DataSplit", "Blocks", "DataError", "default_domains", "domain_from_file", "domain_from_dataset",
            "make_blocks", "domain_from_model",
            "SALIENCY", "Saliency", "compute_saliency", "register_saliency", "KnowledgeMap", "Cluster",
            "analyze_knowledge", "held_out_loss"]
from .evaluation import EvalReport, TaskResult, evaluate, lm_eval_model  # noqa: E402
from .tasks import register_task  # noqa: E402

__all__ += ["evaluate", "EvalReport", "TaskResult", "lm_eval_model", "register_task"]
from .recovery import RecoveryResult, recover, update_weights  # noqa: E402

__all__ += ["recover", "RecoveryResult", "update_weights"]
from .adapters import add_lora  # noqa: E402
from .lhspg import LHSPG  # noqa: E402
from .pipeline import PruneResult, PruneSettings, prune  # noqa: E402
from .progressive import LHSPGResult, lhspg_prune  # noqa: E402

__all__ += ["LHSPG", "lhspg_prune", "LHSPGResult", "add_lora", "prune", "PruneSettings", "PruneResult"]
from .formats import ExportError, export  # noqa: E402

__all__ += ["export", "ExportError"]
