"""The fuzz suite's machinery: awkward-argument generation (arrays.py) and
the registry of entry points with their argument strategies (registry.py).
tests/test_fuzz.py runs every registry entry; a new public function or
``_core`` entry is one more ``Entry`` in registry.py."""
