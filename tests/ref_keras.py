"""Worker functions that touch Keras; run only through resnet_spec.isolate.run_isolated."""


def keras_trainable_counts(names):
    import keras
    from counting import keras_counts

    out = {}
    for name in names:
        model = getattr(keras.applications, name)(weights=None, classifier_activation=None)
        out[name] = keras_counts(model)["params"]
        keras.backend.clear_session()
    return out
