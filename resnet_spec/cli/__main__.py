"""``python -m resnet_spec.cli ...`` runs the ``resnet-spec`` command (as ``python -m resnet_spec``)."""
from . import main

if __name__ == "__main__":  # pragma: no cover
    main()
