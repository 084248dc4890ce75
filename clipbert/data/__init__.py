"""Data: synthetic benchmark, sparse clip sampling, decoding backends and task datasets.

Entry points (imported from their modules, so `import clipbert.data` stays light):
- `config.DataConfig` (or `DataConfig.from_dict(json_section)`): the validated `data` config section.
- `datasets.build_dataset(task, split, data_cfg, tokenizer, model_norm)`: a task dataset; for retrieval
  val/test a `RetrievalEvalData` (videos dataset + all tokenized texts + text_to_video).
- `loader.build_loader(dataset, data_cfg, batch_size, train, rank=None, world_size=None, device="cpu")`:
  yields the batches of docs/ARCHITECTURE.md; call `loader.sampler.set_epoch(epoch, batches_consumed)`.
- `preprocess.normalization_for(model_cfg)`, `sampling.sample_frame_indices(...)`,
  `bad_input.BadInputTracker` (`update(batch)` per batch, `summary(epoch)` per epoch).
- `python -m clipbert.data.build_frame_store --videos DIR --fps F --out frames.h5` and
  `python -m clipbert.data.transcode --videos DIR --out DIR2 --max-side 448 --gop 4`.
"""
