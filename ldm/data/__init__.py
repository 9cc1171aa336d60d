"""Datasets: one module per family (mnist, shapes, torchvision sets, folder), a catalog of what each provides and
a registry that builds splits."""
