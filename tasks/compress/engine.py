"""GPU-only: build and time a TensorRT engine from a Q/DQ ONNX model (explicit INT8)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from tasks.lm.artifact import INPUT_NAMES


def build_engine(onnx_path: Path, engine_path: Path, n_positions: int, max_batch: int = 16,
                 ) -> dict[str, Any]:
    """Parse the ONNX graph, build an INT8 engine whose shapes cover batch 1..max_batch,
    new length 1..n_positions and a past of 0..n_positions tokens (the graph takes past
    key/values), serialize it and time batch 8 on a whole context (an empty past)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.INT8)  # Q/DQ nodes carry the scales: no calibrator
    profile = builder.create_optimization_profile()
    for name in INPUT_NAMES:
        profile.set_shape(name, (1, 1), (8, n_positions), (max_batch, n_positions))
    for heads, dim, name in _past_inputs(network):
        profile.set_shape(name, (1, heads, 0, dim), (8, heads, n_positions // 2, dim),
                          (max_batch, heads, n_positions, dim))
    config.add_optimization_profile(profile)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT engine build failed (see the log above)")
    engine_path.write_bytes(bytes(serialized))
    build_s = time.perf_counter() - start
    return {"tensorrt_build_s": build_s,
            "tensorrt_latency_ms_batch8": _time_engine(trt, logger, bytes(serialized),
                                                       n_positions)}


def _past_inputs(network: Any) -> list[tuple[int, int, str]]:
    """(kv heads, head dim, name) of each past key/value input."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    return [(t.shape[1], t.shape[3], t.name) for t in inputs if t.name not in INPUT_NAMES]


def _time_engine(trt, logger, serialized: bytes, n_positions: int, repeats: int = 50) -> float:
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    context = engine.create_execution_context()
    ids = torch.randint(0, 256, (8, n_positions), device="cuda")
    mask = torch.ones_like(ids)
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": mask.cumsum(-1) - 1}
    for name, tensor in feeds.items():
        context.set_input_shape(name, tuple(tensor.shape))
        context.set_tensor_address(name, tensor.data_ptr())
    buffers = []  # kept alive while the engine runs
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        shape = tuple(engine.get_tensor_shape(name))
        if name.startswith("past_key_values."):  # an empty past: a whole-context pass
            context.set_input_shape(name, (8, shape[1], 0, shape[3]))
            buffers.append(torch.empty(1, device="cuda"))  # a valid address for no data
        elif name.startswith("present."):
            buffers.append(torch.empty((8, shape[1], n_positions, shape[3]), device="cuda"))
        elif name == "logits":
            buffers.append(torch.empty((8, n_positions, shape[-1]), device="cuda"))
        else:
            continue
        context.set_tensor_address(name, buffers[-1].data_ptr())
    stream = torch.cuda.current_stream().cuda_stream
    for _ in range(5):
        context.execute_async_v3(stream)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        context.execute_async_v3(stream)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1000
