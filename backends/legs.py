"""The one registry of legs, targets and devices: what a name on the command line or in the Python API
means. ``parity`` and ``parity --train`` (``--backends``) and ``convert --to`` parse their names here, the
torch, ONNX Runtime and Keras device code parses ``cpu`` / ``cuda:N`` here, and
:func:`resnet_spec.backends.get` (behind :func:`resnet_spec.build`) reads :data:`KERAS_LEGS` and
:data:`BACKENDS` from here. Framework-free.

Names. A *leg* is one framework running the IR (``torch``, ``onnx``, ``keras-tensorflow``,
``keras-jax``, ``keras-torch``); ``tensorflow`` is Keras on TensorFlow as ``convert`` writes it (the
``.keras`` and SavedModel files) and, as a parity leg, the same as ``keras-tensorflow``. On the command
line ``tf`` and ``keras`` mean ``tensorflow``, ``pytorch`` means ``torch`` and ``litert`` means
``tflite`` (:data:`ALIASES`). In the Python API, ``build(net, "keras")`` means Keras on whichever backend
the process runs (:data:`KERAS_LEGS`' ``keras`` entry): the one place where ``keras`` is not TensorFlow,
because a Python user has already chosen ``KERAS_BACKEND``.
"""

from __future__ import annotations

from ..errors import BackendUnavailable, ResNetSpecError

#: What ``convert --to`` writes (and ``build`` accepts, with the Keras names of :data:`KERAS_LEGS`).
BACKENDS = ("torch", "onnx", "tensorflow")
#: Parity legs, in report order. ``tensorflow`` is accepted as an alias of ``keras-tensorflow``.
LEGS = ("torch", "onnx", "keras-tensorflow", "keras-jax", "keras-torch")
#: Keras leg -> Keras backend (``keras``: whichever backend the process runs).
KERAS_LEGS = {"keras": None, "keras-tensorflow": "tensorflow", "keras-jax": "jax", "keras-torch": "torch"}
#: The legs with a training step (``parity --train``), in report order.
TRAIN_LEGS = ("torch", "keras-tensorflow", "keras-jax", "keras-torch")
#: The compute dtypes a backend may be asked for (parity's tolerances are keyed by them); a backend
#: refuses the ones it cannot honour.
DTYPES = ("float32", "float16", "bfloat16")
#: Command-line spellings -> the canonical name.
ALIASES = {"tf": "tensorflow", "keras": "tensorflow", "pytorch": "torch", "litert": "tflite"}


def keras_backend_of(name: str) -> str | None:
    """The Keras backend a leg or target runs on ('tensorflow', 'jax', 'torch'), None for a non-Keras one
    (and for ``keras``, the active backend)."""
    return KERAS_LEGS.get("keras-tensorflow" if name == "tensorflow" else name)


def _leg(name: str) -> str:
    """The leg a name runs: ``tensorflow`` and ``keras-tensorflow`` are one (repeats of it are dropped)."""
    return "keras-tensorflow" if name == "tensorflow" else name


def named(text: str) -> list:
    """The names ``text`` gives (aliases resolved, ``all`` kept as it is, not expanded), in order."""
    return [ALIASES.get(t, t) for t in (t.strip() for t in text.split(",")) if t]


def parse_names(text: str, known: tuple, everything: tuple | None = None, missing=None) -> tuple:
    """``--backends`` / ``--to`` text -> ``(names, {name: why not installed})``.

    Comma-separated names from ``known`` (aliases allowed) and ``all``: every name of ``everything``
    (default ``known``), combined with the others (``all,tflite``), in the order given, repeats dropped
    (``tensorflow`` and ``keras-tensorflow`` are one). A name of ``all`` for which ``missing(name)`` gives
    a reason is left out and returned beside them (not run, and failing nothing), unless it is also named
    explicitly: a name given explicitly always runs. Unknown names and an empty list are a
    :class:`ResNetSpecError` naming the choices.
    """
    items = named(text)
    if not items:
        raise ResNetSpecError(f"names no backend; choose from {', '.join(known)} or all")
    for t in items:
        if t != "all" and t not in known:
            raise ResNetSpecError(f"unknown backend {t!r}; choose from {', '.join(known)} or all")
    explicit = {_leg(t) for t in items if t != "all"}
    out, skipped = [], {}
    for t in items:
        for name in (everything or known) if t == "all" else (t,):
            reason = missing(name) if missing and t == "all" and _leg(name) not in explicit else None
            if reason:
                skipped[name] = reason
            elif _leg(name) not in map(_leg, out):
                out.append(name)
    return out, skipped


def parse_legs(text: str, missing) -> tuple:
    """``parity --backends`` text -> ``(legs to run, {leg: reason} for the legs of all that are not
    installed)``, ``missing(leg)`` giving the reason. A leg named explicitly always runs (and fails when
    it cannot)."""
    known = BACKENDS + tuple(k for k in KERAS_LEGS if k != "keras")
    return parse_names(text, known, LEGS, missing)


def parse_device(device: str, who: str) -> int | None:
    """``'cpu'`` -> None; ``'cuda'`` / ``'cuda:N'`` -> the GPU index; anything else refused in one line
    naming ``who`` (the leg)."""
    if device == "cpu":
        return None
    kind, sep, index = device.partition(":")
    if kind == "cuda" and (not sep or index.isdigit()):
        return int(index) if sep else 0
    raise BackendUnavailable(f"{who}: unknown device {device!r}")
