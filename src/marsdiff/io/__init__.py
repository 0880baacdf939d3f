"""File I/O that never leaves partial outputs: atomic writes and the HDF5 trajectory store."""

from marsdiff.io.atomic import atomic_path, atomic_dir, write_json, write_text

__all__ = ["atomic_path", "atomic_dir", "write_json", "write_text"]
