"""Backbones that load by name without the model hub; `model.backbone.BACKBONES` lists them."""
