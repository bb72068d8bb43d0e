"""The framework-neutral weight set, ``{canonical name: numpy.float32 array}``: made, checked, read,
written and loaded from any source.

Names and shapes come from the IR (:meth:`resnet_spec.ir.Network.tensors`); convolution weights are
``(out, in/groups, kh, kw)`` and linear weights ``(out, in)`` as in PyTorch. Backends convert layouts
themselves (e.g. HWIO for Keras). Stored as safetensors; torchvision/timm ``state_dict`` files are read
with ``torch.load(weights_only=True)``, which refuses arbitrary pickled objects.

The package, lowest module first (each imports only those above it):

- :mod:`.check`: :func:`check_weights` (names, shapes, dtypes, values against the IR, every problem
  naming the tensor) and the name/shape/range checks the file readers run before reading data;
  ``IGNORED_SUFFIXES`` (``num_batches_tracked``).
- :mod:`.init`: fresh seeded weights, :func:`init_weights`, one initialiser per IR op type in ``INIT``.
- :mod:`.files`: weight files with bounded time and memory: safetensors headers and torch zips checked
  before any data is read, torch checkpoints unwrapped (``read_checkpoint``: containers, EMA copies,
  wrapper prefixes); ``TORCH_SUFFIXES``, the one list of torch checkpoint names; :func:`read_weights`,
  :func:`save_weights`.
- :mod:`.loader`: :func:`load` ``(net, source, LoadOptions) -> (weights, notes)``, the one loader for
  every source (None, a mapping, a weight file, an import source); a new classifier (``new_head``).

Inside the project (``resnet_spec`` and ``backends``), import from the submodule (``from
..weights.check import check_weights``), not from this package: ``load`` reaches the importers and the
backends, which must not import this ``__init__`` back (tests/test_structure.py finds such cycles).
"""

from .check import Weights, check_weights
from .files import WeightsNote, read_safetensors, read_torch, read_weights, save_weights
from .init import INIT, init_weights
from .loader import LoadOptions, load

__all__ = ["Weights", "INIT", "init_weights", "check_weights", "read_safetensors", "read_torch", "read_weights",
           "save_weights", "WeightsNote", "LoadOptions", "load"]
