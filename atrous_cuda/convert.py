"""Swap the dilated convolutions of an existing model for atrous_cuda's, and back.

The swapped modules keep the very same Parameter and buffer objects, forward
and backward hooks, weight_norm/parametrize parametrizations, device, dtype
and memory format: only the class changes. With inplace=False the original
model is left untouched: the new tree has its own module objects and
containers, holding the very same Parameters, buffers and hooks.
"""
from torch import nn
from torch.nn.utils import parametrize

from .modules import AtrousConv1d, AtrousConv2d

__all__ = ["convert_model", "revert_model"]

_TO_ATROUS = {nn.Conv1d: AtrousConv1d, nn.Conv2d: AtrousConv2d}
_TO_TORCH = {AtrousConv1d: nn.Conv1d, AtrousConv2d: nn.Conv2d}


def _base_class(module):
    """The plain class of `module`, seeing through the subclass that
    torch.nn.utils.parametrize injects (ParametrizedConv2d and the like)."""
    cls = type(module)
    if parametrize.is_parametrized(module) and cls.__name__.startswith("Parametrized"):
        return cls.__bases__[0]
    return cls


def _shallow_state(module, inplace):
    """module.__dict__ for a new module object. With inplace=False the
    containers (parameter, buffer, hook and child dicts) are copied, so the new
    object can be changed without touching the original, while every Parameter,
    buffer and hook in them is the very same object."""
    state = module.__dict__.copy()
    if not inplace:
        for key, value in state.items():
            if isinstance(value, (dict, set)):
                state[key] = value.copy()
    return state


def _with_class(module, new_base, inplace):
    """A new module object of class `new_base` (or its parametrized variant)
    holding the same Parameters, buffers, hooks and parametrizations."""
    cls = type(module)
    new_cls = new_base
    if cls is not _base_class(module):
        # Rebuild the injected parametrization class on top of new_base so the
        # parametrized properties (weight, ...) keep working.
        namespace = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
        new_cls = type(f"Parametrized{new_base.__name__}", (new_base,), namespace)
    new = new_cls.__new__(new_cls)
    new.__dict__ = _shallow_state(module, inplace)
    return new


def _is_dilated(module):
    return any(d > 1 for d in module.dilation)


def _convert(module, mapping, predicate, inplace, describe):
    base = _base_class(module)
    if base in mapping and predicate(module):
        describe(module)
        return _with_class(module, mapping[base], inplace)
    if not inplace:
        # Not copy.copy: parametrized modules (weight_norm, ...) refuse to be
        # pickled/copied, so build the shallow copy by hand.
        copied = type(module).__new__(type(module))
        copied.__dict__ = _shallow_state(module, inplace)
        module = copied
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        if name == "parametrizations":
            continue
        new_child = _convert(child, mapping, predicate, inplace, describe)
        if new_child is not child:
            module._modules[name] = new_child
    return module


def convert_model(module, inplace=False, convert_all=False):
    """Replaces every nn.Conv1d/nn.Conv2d whose dilation > 1 (every one with
    convert_all=True) by AtrousConv1d/AtrousConv2d.

    With inplace=False the input model is not modified: containers along the
    way are shallow-copied and the swapped convs are new module objects, but
    every Parameter, buffer and hook is the same object as before.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"convert_model: expected an nn.Module, got {type(module).__name__}")
    predicate = (lambda m: True) if convert_all else _is_dilated
    return _convert(module, _TO_ATROUS, predicate, inplace, lambda m: None)


def revert_model(module, inplace=False):
    """The reverse of convert_model: AtrousConv1d/2d back to nn.Conv1d/2d.

    Raises ValueError for a module whose padding nn.Conv cannot express
    ('causal', 'same' with stride > 1, or asymmetric padding)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"revert_model: expected an nn.Module, got {type(module).__name__}")

    def check(m):
        ndim = m._ndim
        strided = any(s != 1 for s in m.stride)
        asymmetric = not isinstance(m.padding, str) and len(m.padding) == 2 * ndim
        bad = m.padding == "causal" or (m.padding == "same" and strided) or asymmetric
        if bad:
            raise ValueError(
                f"revert_model: {type(m).__name__} with padding={m.padding!r}, stride={m.stride} has no "
                f"nn.Conv{ndim}d equivalent; expected padding that nn.Conv{ndim}d accepts"
            )

    return _convert(module, _TO_TORCH, lambda m: True, inplace, check)
