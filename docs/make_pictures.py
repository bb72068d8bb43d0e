"""Make the two pictures in the README with the tool itself.

    python docs/make_pictures.py

docs/diagram_resnet50.png: ``resnet-spec diagram resnet50 -o docs/diagram_resnet50.png``.
docs/parity_plot.png: ``parity --plot`` on resnet18 with a planted bug in the PyTorch model (layer3.0.bn2
uses epsilon 1e-1 instead of the spec's 1e-5, the kind of mismatch parity exists to catch), so that the
picture shows what a divergence looks like; without the bug every line stays under the tolerance.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def wrong_epsilon(model):
    """Planted fault, applied in the torch worker: one BatchNorm with another framework's epsilon."""
    model.layer3[0].bn2.eps = 1e-1
    return model


def main():
    sys.path.insert(0, HERE)
    import resnet_spec
    from resnet_spec import parity
    from resnet_spec.diagram import write_diagram
    from resnet_spec.parityplot import write_plot

    write_diagram(resnet_spec.load("resnet50"), os.path.join(HERE, "diagram_resnet50.png"))
    net = resnet_spec.load("extends: resnet18\nname: resnet18\ninput: {size: 96}\n")
    w = resnet_spec.init_weights(net, seed=0, random_bn=True)
    from make_pictures import wrong_epsilon as fault  # importable by the worker processes

    report = parity.run(net, w, backends=("torch", "onnx", "tensorflow"), layers=True, mutate={"torch": fault})
    print(parity.format_report(report))
    write_plot(report.to_json(), os.path.join(HERE, "parity_plot.png"))


if __name__ == "__main__":
    main()
