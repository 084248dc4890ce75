"""Data: synthetic benchmark, sparse clip sampling, decoding backends and task datasets."""
