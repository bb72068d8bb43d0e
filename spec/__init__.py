"""The model zoo: bundled YAML specs, installed as ``resnet_spec.zoo`` (data only)."""
