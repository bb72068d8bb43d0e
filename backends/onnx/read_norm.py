"""Norms without running statistics in an ONNX graph (:mod:`.reader`): GroupNorm (named where a ResNet has
its BatchNorms; ``norm.type: group``) and weight-standardized convolutions (``conv.standardize``), node patterns
in :mod:`.patterns_norm`."""

from __future__ import annotations

from .patterns_norm import group_norm_back, group_norm_op, restandardized
from ...importers.source import ImportRefused, Layer


class NormReader:
    """Mixin of the graph walker: GroupNorm layers and the standardized convs' facts."""

    def norm_back(self, node, ins):
        """``(facts, input)`` of a GroupNorm ending at ``node`` (an ``Add``, or ONNX's GroupNormalization), or None."""
        if node.op_type == "GroupNormalization":
            return group_norm_op(self.g, node, ins)
        return group_norm_back(self.g, node, ins) if node.op_type == "Add" else None

    def gn(self, name, node, facts):
        c = len(facts["weight"])
        self.src.weights[f"{name}.weight"], self.src.weights[f"{name}.bias"] = facts["weight"], facts["bias"]
        self.src.layers[name] = Layer(name, "gn", (c,), True, node.name or node.output[0], eps=facts["eps"])
        groups = self.src.facts.setdefault("norm_groups", facts["groups"])
        if groups != facts["groups"]:
            raise self.g.refuse(node, f"GroupNorms of {groups} and of {facts['groups']} groups; a spec has one "
                                      "norm.groups")
        self.src.facts["eps"] = facts["eps"]

    def standardization(self):
        """``standardize_eps`` where the convs' weights are standardized in the graph: every conv of the
        network (a squeeze-excite's aside) with one eps, or a refusal."""
        std = self._std
        if not std:
            return
        eps = sorted(set(std.values()))
        plain = [n for n, layer in self.src.layers.items() if layer.kind == "conv" and n not in std and ".se." not in n]
        folded = [n for n in plain if len(eps) == 1 and restandardized(self.src.weights[f"{n}.weight"], eps[0]) <= 1e-6]
        plain = [n for n in plain if n not in folded]
        if plain or len(eps) > 1:
            what = f"eps {eps}" if not plain else f"convolution {plain[0]!r} is not (a constant weight that " \
                f"standardizing changes by {restandardized(self.src.weights[f'{plain[0]}.weight'], eps[0]):.1e}: " \
                "plain, or standardized by the exporter with its raw weight lost)"
            raise ImportRefused(f"{self.g.path}: weight-standardized convolutions, but {what}: a spec standardizes "
                                "every convolution (conv.standardize) with one eps")
        self.src.facts["standardize_eps"] = eps[0]
        if folded:
            worst = max(restandardized(self.src.weights[f"{n}.weight"], eps[0]) for n in folded)
            self.src.notes.append(f"the exporter stored {len(folded)} convolution weight(s) already standardized "
                                  f"({folded[0]}...): read as their raw weights, which standardize to themselves "
                                  f"within {worst:.1e} relative")
