"""The JSON Schema of the spec format, installed as ``resnet_spec.schemas`` (data only)."""
