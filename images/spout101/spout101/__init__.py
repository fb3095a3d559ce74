"""spout101 reference workers: the spout's consumer and the downstream processor.

Both entry points live in one package (and one image) as upstream ships them;
each pipeline picks its worker with ``python -m spout101.consumer`` or
``python -m spout101.processor``.
"""
