"""What ``verify`` lets a file it did not make run: no code from an input file runs unless the user
passes ``--trust-code``.

Four of the deployable formats can carry code, and loading one the usual way runs it:

==============  ========================================================================================
``.py``         the standalone source: loading it is executing it. Always refused without the flag.
``.pt2``        ``torch.export.load`` unpickles entries marked ``use_pickle`` (and ``custom_obj_``/
                ``opaque_obj_`` constants) with ``weights_only=False``, falls back to an unsafe
                unpickling of ``data/sample_inputs/*.pt``, evaluates shape-expression strings with
                sympy's ``sympify``, ``exec``s an ExportedProgram's ``guards_code``, loads compiled
                AOTInductor libraries, and accepts the pre-2.7 layout (pickled state). Without the flag
                the archive is checked first (:mod:`resnet_spec.trust_pt2`): sizes, then every entry and
                every string of its JSON against what ``torch.export.save`` writes for a ResNet; it is
                then loaded from a clean copy holding only the checked entries, sample inputs emptied.
SavedModel      its graph runs whatever ops it holds (``WriteFile``, ``PyFunc``, ...) when a signature
                is called. Without the flag ``saved_model.pb`` is read with TensorFlow's protobuf in the
                worker (:mod:`resnet_spec.trust_savedmodel`) and every op of every graph and function is
                checked against an allow-list of pure math and array ops; it is then loaded from a
                folder holding the checked ``saved_model.pb`` and the original ``variables/``.
``.tflite``     a custom operator: ``tf.lite.Interpreter`` (verify's fallback when LiteRT is not installed)
                runs Select-TF ``Flex...`` ops, TensorFlow ops with side effects among them. Without the
                flag a file with any custom operator is refused (ours use builtin operators only).
==============  ========================================================================================

``.onnx`` runs in ONNX Runtime with no custom-op library registered; a ``.keras`` file's classes are
checked against an allow-list in the worker that loads it, flag or not (:mod:`resnet_spec.trust_keras`,
through :func:`resnet_spec.backends.keras.backend.load_keras`), and it loads with Keras's
``safe_mode``; that refusal names no flag, as the flag does not lift it. A refusal is one line
naming the file, the reason and the flag: ``FILE: <why>; pass --trust-code to run it anyway``.
``--trust-code`` loads the file as its framework does, unchecked; the size checks that guard against
bombs (:func:`resnet_spec.trust_pt2.check_structure`) still apply, as they concern memory, not code.
:func:`resnet_spec.verify.run` makes the checks: a ``.py`` and a ``.pt2`` in the calling process before
any work; a SavedModel and a ``.tflite`` in their workers before any file runs; a ``.pt2``, a
SavedModel and a ``.tflite`` again in the worker that loads them, on the bytes it loads.
"""

from __future__ import annotations

from .errors import ResNetSpecError
from .fileio import shown

#: the option that lets verify run code from its input files
TRUST_FLAG = "--trust-code"
#: why a standalone source is refused
PY_REFUSAL = "a Python source file runs its own code when it is loaded"


class Untrusted(ResNetSpecError):
    """A file that would run code of its own when loaded; refused unless ``--trust-code`` is passed."""


def refuse(path: str, why: str) -> Untrusted:
    """The refusal of ``path``, naming the reason and the flag (raise it)."""
    return Untrusted(f"{shown(path)}: {why}; pass {TRUST_FLAG} to run it anyway")

