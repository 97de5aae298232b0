"""Identity tied to what was trained (host side, pure).

The held-out process records two architecture graphs: a fresh model built at the profile's
canonical context (the family id that scoring uses) and the *trained* model at the run's
context. Both are evidence from a process that ran submission code, so the host checks them
against each other and against the weights file it inspected itself:

* the two family ids must be equal (``identity.context_mismatch``): a ``build_model`` that shows a
  decoy at the canonical context and trains something else is refused;
* every parameter the run-context graph lists must be a tensor of the same shape in the weights
  file, and the graph's parameter count may not exceed the file's (``identity.weights_mismatch``):
  a forged graph cannot claim another model's shapes. An entry that is not a name and a list of
  whole numbers is a mismatch too (it made this check raise, recorded as ours). Whether the file
  holds tensors the graph does not list is not decided here (a graph may omit what it likes; it
  is evidence): the program check runs the recorded pass on the file's tensors.
"""

from __future__ import annotations

from typing import Any

from prism.errors import MinerFault
from prism.evaluator.budgets import WeightsInventory


def _listed_parameter(entry: Any) -> tuple[str | None, tuple[int, ...] | None]:
    """(name, shape) of one run-context graph entry; (None, None) unless a string and a list of ints."""
    if not isinstance(entry, dict):
        return None, None
    name, shape = entry.get("name"), entry.get("shape")
    if not isinstance(name, str) or not isinstance(shape, list):
        return None, None
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        return None, None
    return name, tuple(shape)


def check_identity(
    canonical: dict[str, Any], trained: dict[str, Any], inventory: WeightsInventory
) -> MinerFault | None:
    if canonical.get("family_id") != trained.get("family_id"):
        return MinerFault(
            f"the model built at the canonical context has family {canonical.get('family_id')}, but the trained "
            f"model at the run's context has family {trained.get('family_id')}: build_model must build the same "
            "architecture at every context",
            code="identity.context_mismatch",
        )
    listed = trained.get("parameters") or []
    if not isinstance(listed, list):
        return MinerFault("the run-context graph has no parameter list", code="identity.weights_mismatch")
    for entry in listed:
        name, shape = _listed_parameter(entry)
        if name is None or name not in inventory.shapes or inventory.shapes[name] != shape:
            return MinerFault(
                f"the recorded parameter {name!r} {shape} is not a tensor of that shape in the trained weights",
                code="identity.weights_mismatch",
            )
    counted = trained.get("parameter_count")
    if not isinstance(counted, int) or counted > inventory.file_elements:
        return MinerFault(
            f"the recorded model has {counted} parameters, more than the {inventory.file_elements} values "
            "in the trained weights",
            code="identity.weights_mismatch",
        )
    return None


__all__ = ["check_identity"]
