"""Keras (TensorFlow, JAX, PyTorch), TensorFlow SavedModel and TFLite, both directions.

* :mod:`.backend` -- a parity leg on any Keras backend (:class:`.backend.Leg`, ``select``, ``load_keras``);
* :mod:`.model` -- lowering: IR -> Keras layers, ``build``, ``tap_model``; :mod:`.layers` -- the custom layers;
* :mod:`.names` -- Keras layer names <-> canonical names; :mod:`.weights` -- canonical weights <-> Keras layouts;
* :mod:`.applications` -- keras.applications name maps and weight transfer;
* :mod:`.tf` -- the ``tensorflow`` backend (``.keras`` and SavedModel); :mod:`.tflite` -- ``.tflite`` files;
* :mod:`.reader` -- the import direction: a ``.keras`` file or keras.applications model -> a source.

Nothing is imported here: ``import keras`` inside this package still means Keras.
"""
