"""Shared DALI plumbing: build a feed_input pipeline, run several in parallel, copy outputs to PyTorch."""

from __future__ import annotations

import numpy as np
import torch


def build_pipeline(graph, max_batch_size, num_threads, device, device_id, prefetch_queue_depth=1):
    from nvidia.dali import Pipeline

    pipe = Pipeline(
        batch_size=max_batch_size,
        num_threads=num_threads,
        device_id=device_id if device == "gpu" else None,  # None: a CPU-only pipeline
        prefetch_queue_depth=prefetch_queue_depth,
        # Asynchronous execution: schedule_run() returns at once, so several pipelines decode in parallel.
        exec_pipelined=True,
        exec_async=True,
    )
    with pipe:
        output = graph()
        pipe.set_outputs(output.gpu() if device == "gpu" else output)
    pipe.build()
    return pipe


def to_torch(tensor_list, device: torch.device) -> torch.Tensor:
    """A uniform DALI TensorList -> a torch tensor (copy through nvidia.dali.plugin.pytorch.feed_ndarray)."""
    return _copy(tensor_list.as_tensor(), device)


def to_torch_samples(tensor_list, device: torch.device) -> list[torch.Tensor]:
    """A DALI TensorList whose samples may differ in shape -> one torch tensor per sample."""
    if tensor_list.is_dense_tensor():
        return list(to_torch(tensor_list, device).unbind(0))
    return [_copy(tensor_list[i], device) for i in range(len(tensor_list))]


def _copy(dense, device: torch.device) -> torch.Tensor:
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

    out = torch.empty(dense.shape(), dtype=to_torch_type[dense.dtype], device=device)
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    feed_ndarray(dense, out, cuda_stream=stream)
    if stream is not None:
        # The copy is asynchronous, and the overlapped loaders schedule the pipeline's next run as soon as
        # this returns: finish it before DALI may reuse the output buffer (a sync per batch: microseconds).
        stream.synchronize()
    return out


def start_pipelines(pipes, inputs: dict[str, list]) -> list:
    """Split a batch over the pipelines (contiguous chunks), feed and schedule each; returns the started
    ones. The pipelines then decode concurrently; `collect_outputs` waits and concatenates."""
    batch = len(next(iter(inputs.values())))
    chunk = -(-batch // len(pipes))
    started = []
    for p, pipe in enumerate(pipes):
        lo, hi = p * chunk, min(batch, (p + 1) * chunk)
        if lo >= hi:
            break
        for name, values in inputs.items():
            pipe.feed_input(name, values[lo:hi])
        pipe.schedule_run()  # returns at once; the pipelines decode in parallel
        started.append(pipe)
    return started


def collect_outputs(started, device: torch.device) -> torch.Tensor:
    """Wait for the started pipelines and concatenate their outputs in order."""
    outs = []
    for pipe in started:
        (tensor_list,) = pipe.outputs()
        outs.append(to_torch(tensor_list, device))
    return torch.cat(outs)


def collect_samples(started, device: torch.device) -> list[torch.Tensor]:
    """Wait for the started pipelines; their output samples in order, one tensor each (shapes may differ)."""
    outs = []
    for pipe in started:
        (tensor_list,) = pipe.outputs()
        outs += to_torch_samples(tensor_list, device)
    return outs


def drain_outputs(started) -> None:
    """Wait for the started pipelines and drop their outputs: a job abandoned before its collect must not
    leave them queued, or the pipelines' next collect would return them instead of its own."""
    for pipe in started:
        pipe.outputs()


def read_bytes(path: str) -> np.ndarray:
    return np.fromfile(path, dtype=np.uint8)
