"""NVIDIA DALI pipelines: video (`fn.decoders.video`) and frame-store JPEG (`fn.decoders.image`) decoding
with resize/normalize/pad, fed through `fn.external_source` and handed to PyTorch. Imported lazily: DALI is
optional, and `clipbert.data.loader.build_loader` uses these modules only for backend "dali" or a frame store
read with `frame_store_reader="dali"`."""
