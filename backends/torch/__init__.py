"""PyTorch, both directions.

* :mod:`.backend` -- the backend module (``build``, ``infer``, ``available``, ``OPS``): IR -> ``nn.Module``,
  devices and dtypes, ``convert`` (``.pt2``, ``.py``, ``.safetensors``);
* :mod:`.source` -- the standalone PyTorch source (``<name>.py``), its helper classes copied from
  :mod:`.backend`;
* :mod:`.reader` -- the import direction: PyTorch state dicts and torchvision/timm models -> a source.

Nothing is imported here: ``import torch`` inside this package still means PyTorch.
"""
