"""Errors raised by shear-graph. Each message names what is wrong and what to do."""


class ShearGraphError(Exception):
    """Base class of every error shear-graph raises on bad input."""


class ArgumentTypeError(ShearGraphError, TypeError):
    """An argument is not of the type a function takes (a TypeError too, as before)."""


class TraceError(ShearGraphError):
    """The model could not be exported to an FX graph."""


class UnsupportedOpError(ShearGraphError):
    """An op in the traced graph has no dimension-propagation rule.

    Attributes
    ----------
    op : str
        The aten op, e.g. ``"aten.fft_fft.default"``.
    module : str
        The module path whose forward emitted the op.
    """

    def __init__(self, op: str, module: str):
        self.op, self.module = op, module
        super().__init__(
            f"unsupported op {op} in module '{module or '<top level>'}': shear-graph has no "
            "dimension-propagation rule for it, so it cannot tell which channels stay coupled. "
            "Register one with shear_graph.rules.register_rule(op, fn) (see rules.py for "
            "examples), or report the op."
        )


class PlanError(ShearGraphError):
    """A prune plan is invalid for the model it is applied to."""


class CheckpointError(ShearGraphError):
    """A saved pruned model is missing or corrupted."""


class EvalDataError(ShearGraphError):
    """An evaluation task or text file is missing or malformed; the message
    names the file (and the line, where one is at fault)."""


class CalibrationOverlapError(ShearGraphError):
    """Evaluation was asked to score data that was used for calibration or
    recovery."""


class TrainingError(ShearGraphError):
    """Training (LHSPG or recovery) diverged: a loss became NaN or infinite.
    The message names the step and where the last good checkpoint is.

    Attributes
    ----------
    step : int
        The optimizer step whose loss was not finite (recovery counts from 0,
        LHSPG from 1, as their progress bars do).
    domain : str or None
        The data domain being trained on, or probed, at that step (recovery).
    """

    def __init__(self, message: str, step: int, domain: str | None = None):
        self.step, self.domain = step, domain
        super().__init__(message)


class ExportError(ShearGraphError):
    """A model, or an output path, that an export format cannot take."""
