"""The norm-act layers of an ONNX graph (:mod:`.reader`): Filter Response Normalization with its TLU and EvoNorm-S0
(``norm.type: frn`` / ``evonorm_s0``; node patterns and their check in :mod:`.patterns_frn`), named where a ResNet
has its norms. Each holds the ReLU after it (``resolve_frn.fold_acts``): the walk puts a ReLU after one that has
its activation (a TLU, EvoNorm-S0's sigmoid gate), so that the structure reads as the spec's, and the layer keeps
``tau`` / ``v`` only then. In a network of EvoNorm-S0 the norms without their activation are an affine alone
(a per-channel Mul and Add): read as such by the walk and made EvoNorm-S0 layers here."""

from __future__ import annotations

from ...importers.source import ImportRefused, Layer

KIND = "normact"  # the walk's kind of a norm-act layer (read_layers.NORM_KINDS)


def activation_stub(node):
    """A ``Relu`` standing for the activation a norm-act ``node`` holds (named after it), for the walk."""
    from onnx import helper

    return helper.make_node("Relu", list(node.input[:1]), list(node.output),
                            name=f"{node.name or node.output[0]} (activation)")


class NormActReader:
    """Mixin of the graph walker: FRN and EvoNorm-S0 layers and the network's one norm."""

    def norm_ops_back(self, value, node, ins):
        """``(walk entries in reverse order, input)`` of the norm without running statistics that ends in ``value``
        (computed by ``node``): a norm-act layer, then a ReLU standing for its activation where it has one, or a
        GroupNorm (:meth:`.read_norm.NormReader.norm_back`); None for anything else."""
        if value in self.g.norm_acts:
            facts, x = self.g.norm_acts[value]
            relu = [("op", facts.setdefault("relu", activation_stub(node)), ins)] if facts["act"] else []
            return relu + [(KIND, node, facts)], x
        gn = self.norm_back(node, ins) if node.op_type in ("Add", "GroupNormalization") else None
        return ([("gn", node, gn[0])], gn[1]) if gn else None

    def norm_act(self, name, node, facts):
        leaf = "tau" if facts["kind"] == "frn" else "v"
        self.src.weights[f"{name}.weight"], self.src.weights[f"{name}.bias"] = facts["weight"], facts["bias"]
        if facts["act"]:
            self.src.weights[f"{name}.{leaf}"] = facts[leaf]
        self.src.layers[name] = Layer(name, "gn", (len(facts["weight"]),), True, facts["origin"], eps=facts["eps"])
        self._norm_act_layers.add(name)
        key = (facts["kind"], facts["eps"], facts["groups"])
        first = self._norm_acts.setdefault(key, facts["origin"])
        if len(self._norm_acts) > 1:
            (k0, e0, g0), (k1, e1, g1) = list(self._norm_acts)[:2]
            what = "norm types" if k0 != k1 else "epsilons" if e0 != e1 else "EvoNorm-S0 groups"
            raise ImportRefused(f"{self.g.path}: node {first!r}: {what} differ across the network ({k0} eps {e0:g}"
                                f"{'' if g0 is None else f' groups {g0}'}, {k1} eps {e1:g}"
                                f"{'' if g1 is None else f' groups {g1}'}); a spec has one norm")

    def norm_act_facts(self):
        """The spec's ``norm`` of a network of norm-act layers; its EvoNorm-S0 layers without activation (read as
        per-channel affines); any other norm beside them refused in one line."""
        if not self._norm_acts:
            return
        (kind, eps, groups), = self._norm_acts
        affine = [n for n in self._unit if kind == "evonorm_s0"
                  and self.src.layers[n].origin.endswith("(Mul/Add BatchNorm)")]
        for name in affine:
            layer = self.src.layers[name]
            del self.src.weights[f"{name}.running_mean"]
            self.src.layers[name] = Layer(name, "gn", layer.shape, True, layer.origin[:-len(" (Mul/Add BatchNorm)")],
                                          eps=eps)
        self._unit = [n for n in self._unit if n not in affine]
        other = [layer for n, layer in self.src.layers.items() if layer.kind == "bn" or (
            layer.kind == "gn" and n not in self._norm_act_layers and n not in affine)]
        if other:
            raise ImportRefused(f"{self.g.path}: node {other[0].origin!r}: a norm that is not {kind} beside "
                                f"{kind} layers (as {next(iter(self._norm_acts.values()))!r}); a spec has one norm")
        self.src.facts["eps"] = eps
        self.src.facts["norm_act"] = {"type": kind, **({} if groups is None else {"groups": groups}), "eps": eps}
        if affine:
            self.src.notes.append(f"{len(affine)} per-channel Mul/Add pair(s) ({affine[0]}...) read as EvoNorm-S0 "
                                  "layers without their activation (timm's apply_act=False: the affine alone)")
