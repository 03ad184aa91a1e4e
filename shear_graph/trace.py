"""Trace a Hugging Face model (optionally with peft LoRA adaptors) into a ShearGraph."""
from __future__ import annotations

import hashlib
import inspect
import json
import operator
from dataclasses import dataclass, field
from functools import cached_property

import networkx as nx
import torch
from torch.export import ExportedProgram

from .errors import ArgumentTypeError, ShearGraphError, TraceError

ADAPTER_MARKERS = (".lora_A.", ".lora_B.", ".lora_embedding_A.", ".lora_embedding_B.", ".lora_magnitude_vector.")


def is_adapter_param(name: str) -> bool:
    """True for peft LoRA parameters (their rank dim is never a removal group)."""
    return any(m in name for m in ADAPTER_MARKERS)


def base_model_of(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (the model itself otherwise)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def fingerprint(model: torch.nn.Module) -> str:
    """Identity of a model's structure: class and every parameter's name and shape.

    Two models with equal fingerprints accept the same prune plans.
    """
    h = hashlib.sha256(type(model).__name__.encode())
    for name, p in model.named_parameters(remove_duplicate=False):
        h.update(f"{name}:{tuple(p.shape)};".encode())
    return h.hexdigest()[:16]


@dataclass
class ShearGraph:
    """A traced model: the ``torch.export`` program and its parameters.

    Attributes
    ----------
    program : torch.export.ExportedProgram
        The non-strict export of ``model(input_ids, use_cache=False)``.
    param_names : dict
        Placeholder node name -> parameter name (``model.layers.0.mlp.up_proj.weight``).
    aliases : dict
        Parameter name -> every name sharing its tensor (tied embeddings).
    model_class, fingerprint : str
        The traced model's class and structural identity (see :func:`fingerprint`).
    """

    program: ExportedProgram
    param_names: dict
    aliases: dict
    model_class: str
    fingerprint: str
    config: dict = field(default_factory=dict)

    @property
    def graph(self) -> torch.fx.Graph:
        """The FX graph of aten ops."""
        return self.program.graph

    @cached_property
    def nx(self) -> nx.DiGraph:
        """A ``networkx.DiGraph`` view: one node per FX node, edges are tensor flows.

        Node attributes: ``op`` (aten op or placeholder/output), ``module``
        (module path), ``shape`` (tuple), ``dtype`` (str), ``param`` (parameter
        name or None).
        """
        from .rules import module_path, _op_name

        g = nx.DiGraph()
        for node in self.graph.nodes:
            val = node.meta.get("val")
            g.add_node(
                node.name,
                op=_op_name(node.target) if node.op == "call_function" else node.op,
                module=module_path(node),
                shape=tuple(val.shape) if isinstance(val, torch.Tensor) else None,
                dtype=str(val.dtype) if isinstance(val, torch.Tensor) else None,
                param=self.param_names.get(node.name),
            )
            for src in node.all_input_nodes:
                g.add_edge(src.name, node.name)
        return g


def _model_from_config(config) -> torch.nn.Module:
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

    with torch.device("meta"):
        for auto in (AutoModelForCausalLM, AutoModelForMaskedLM, AutoModel):
            try:
                return auto.from_config(config)
            except ValueError:
                continue
    raise TraceError(f"no transformers model class for config {type(config).__name__}")


def _vocab_size(model: torch.nn.Module) -> int:
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if vocab:
        return int(vocab)
    emb = next((m for m in model.modules() if isinstance(m, torch.nn.Embedding)), None)
    return emb.num_embeddings if emb is not None else 2


def default_inputs(model: torch.nn.Module, batch: int = 2, seq_len: int = 7) -> dict:
    """Keyword inputs used for tracing: random ``input_ids`` [batch, seq_len] on
    the model's device, plus ``use_cache=False`` where the forward takes it (a
    cache object output cannot be exported).

    Raises
    ------
    ShearGraphError
        If the model has no parameters or its forward takes no ``input_ids``
        (pass ``example_inputs=`` to :func:`trace` then).
    """
    base = base_model_of(model)
    p = next(base.parameters(), None)
    if p is None:
        raise ShearGraphError(f"{type(base).__name__} has no parameters: there is nothing to prune")
    params = inspect.signature(base.forward).parameters
    takes_kwargs = any(v.kind is inspect.Parameter.VAR_KEYWORD for v in params.values())
    if "input_ids" not in params and not takes_kwargs:
        raise ShearGraphError(
            f"{type(base).__name__}.forward takes no input_ids (it takes {', '.join(params) or 'nothing'}): "
            "pass your own inputs, e.g. sg.trace(model, example_inputs=(x,)) or example_inputs={'x': x}")
    ids = torch.randint(0, min(_vocab_size(base), 100), (batch, seq_len), device=p.device)
    kwargs = {"input_ids": ids}
    if "use_cache" in params:
        kwargs["use_cache"] = False
    return kwargs


def _user_inputs(example) -> tuple:
    """``(args, kwargs)`` from trace's ``example_inputs``: a tensor, a tuple of
    positional inputs, or a dict of keyword inputs."""
    if isinstance(example, torch.Tensor):
        return (example,), {}
    if isinstance(example, dict):
        return (), dict(example)
    if isinstance(example, (list, tuple)):
        return tuple(example), {}
    raise ShearGraphError(f"example_inputs must be a tensor, a tuple of inputs or a dict of keyword inputs, "
                          f"got {type(example).__name__}")


# torch.export wraps code run under another grad mode or autocast state in a
# submodule called through these higher-order ops; transformers' rotary
# embeddings (before 5.2x) run under no_grad and autocast(enabled=False).
MODE_REGIONS = ("wrap_with_set_grad_enabled", "wrap_with_autocast")


def inline_mode_regions(gm: torch.fx.GraphModule) -> int:
    """Splice the bodies of grad-mode and autocast regions into ``gm``'s graph, in place.

    Such a region changes no shape or channel, so the graph with its body
    inlined couples the same dimensions; without this every op inside would be
    hidden behind one opaque call. Nested regions are inlined too.

    Returns
    -------
    int
        The number of regions inlined.
    """
    graph, count = gm.graph, 0
    while True:
        node = next((n for n in graph.nodes if n.op == "call_function"
                     and getattr(n.target, "__name__", "") in MODE_REGIONS), None)
        if node is None:
            return count
        at = next(k for k, a in enumerate(node.args) if isinstance(a, torch.fx.Node) and a.op == "get_attr")
        body = getattr(gm, node.args[at].target)
        placeholders = [b for b in body.graph.nodes if b.op == "placeholder"]
        env = dict(zip(placeholders, node.args[at + 1:]))
        results = None
        with graph.inserting_before(node):
            for b in body.graph.nodes:
                if b.op == "placeholder":
                    continue
                if b.op == "output":
                    results = torch.fx.node.map_arg(b.args[0], env.__getitem__)
                    break
                if b.op == "get_attr":  # a nested region's body lives on ``body``: move it to ``gm``
                    name = b.target
                    while hasattr(gm, name):
                        name += "_"
                    setattr(gm, name, getattr(body, b.target))
                    env[b] = graph.get_attr(name)
                    env[b].meta = dict(b.meta)
                else:
                    env[b] = graph.node_copy(b, env.__getitem__)
        for user in list(node.users):
            if user.op == "call_function" and user.target is operator.getitem:
                user.replace_all_uses_with(results[user.args[1]])
                graph.erase_node(user)
        if node.users:
            node.replace_all_uses_with(results)
        holder = node.args[at]
        graph.erase_node(node)
        if not holder.users:
            graph.erase_node(holder)
        count += 1


def trace(model_or_config, example_inputs=None, *, batch: int = 2, seq_len: int = 7, **kwargs) -> ShearGraph:
    """Export a model to a :class:`ShearGraph`.

    Parameters
    ----------
    model_or_config : torch.nn.Module or transformers.PretrainedConfig
        A transformers model, possibly wrapped by ``peft.get_peft_model``, on
        any device (``meta`` included); or a config, from which the model is
        built on the meta device (no weights: a 70B config traces in minutes).
    example_inputs : torch.Tensor, tuple or dict, optional
        The inputs to trace with, for models that are not ``input_ids``-driven
        language models: a tensor, a tuple of positional inputs or a dict of
        keyword inputs. Default: random ``input_ids`` [batch, seq_len].
    batch, seq_len : int
        Shape of the random ``input_ids`` used to trace. Shapes do not affect
        the groups found.
    **kwargs
        Further keyword inputs of the model's forward (added to ``example_inputs``).

    Returns
    -------
    ShearGraph

    Raises
    ------
    TraceError
        If ``torch.export`` fails; the message carries export's reason.
    ShearGraphError
        If the argument is neither a module nor a config, or the model cannot
        be traced without ``example_inputs`` (no parameters, no ``input_ids``).

    Examples
    --------
    >>> from transformers import LlamaConfig
    >>> g = trace(LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=1,
    ...                       num_attention_heads=4, vocab_size=100))
    >>> g.nx.number_of_nodes() > 0
    True
    """
    from transformers import PretrainedConfig

    if isinstance(model_or_config, PretrainedConfig):
        model = _model_from_config(model_or_config)
    elif isinstance(model_or_config, torch.nn.Module):
        model = model_or_config
    else:
        raise ArgumentTypeError(
            f"trace() takes a transformers model or config (or any torch model with example_inputs=), "
            f"got {type(model_or_config).__name__}"
        )
    if example_inputs is None and not kwargs:
        args, kwargs = (), default_inputs(model, batch, seq_len)
    else:
        args, user_kwargs = _user_inputs(example_inputs) if example_inputs is not None else ((), {})
        kwargs = {**user_kwargs, **kwargs}
        if "use_cache" in inspect.signature(base_model_of(model).forward).parameters:
            kwargs.setdefault("use_cache", False)  # a cache object output cannot be exported
    was_training = model.training
    model.eval()
    try:
        program = torch.export.export(model, args, kwargs, strict=False)
    except Exception as e:  # export raises many types; the user needs the reason
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TraceError(
            f"torch.export could not trace {type(model).__name__}: {first}. "
            "Check that the model runs on these inputs (model(input_ids=...) unless you pass example_inputs=); "
            "custom ops need a torch.export-compatible version."
        ) from e
    finally:
        model.train(was_training)
    inline_mode_regions(program.graph_module)

    names: dict = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    aliases = {n: ns for ns in names.values() for n in ns}
    base = base_model_of(model)
    config = base.config.to_dict() if hasattr(getattr(base, "config", None), "to_dict") else {}
    return ShearGraph(
        program=program,
        param_names=dict(program.graph_signature.inputs_to_parameters),
        aliases=aliases,
        model_class=type(model).__name__,
        fingerprint=fingerprint(model),
        config=json.loads(json.dumps(config, default=str)),
    )
