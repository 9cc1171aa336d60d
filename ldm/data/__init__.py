"""Datasets: one module per family (mnist, shapes, torchvision sets, folder), a registry that builds splits.

Kept free of imports: `ldm.config` reaches `ldm.data.registry` while validating, and should not load torch.
"""
