"""Container images built on this machine, without Docker or a registry.

`hack/build-images` is the entry point. Each image is written as an OCI archive
(`<cache>/images/<name>.tar`, the layout `ctr images import` reads) and rebuilt only when the
hash of its inputs changed. See `recipes.py` for what goes into each image.
"""
