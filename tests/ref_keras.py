"""Worker functions that touch Keras; run only through resnet_spec.isolate.run_isolated."""


def keras_trainable_counts(names):
    import keras

    out = {}
    for name in names:
        model = getattr(keras.applications, name)(weights=None, classifier_activation=None)
        out[name] = int(sum(int(keras.ops.size(w)) for w in model.trainable_weights))
        keras.backend.clear_session()
    return out
