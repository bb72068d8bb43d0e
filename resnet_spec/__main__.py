"""``python -m resnet_spec ...`` runs the same CLI as the ``resnet-spec`` command."""
from .cli import main

if __name__ == "__main__":
    main()
