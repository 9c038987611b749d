"""Fixtures and hooks of the kernel benchmarks (see harness.py)."""
import platform

import pytest
import torch

from harness import DEVICE


@pytest.fixture
def timed(benchmark):
    """benchmark(fn) in `group` (the rows compared with each other), each call waiting for the device to finish."""
    def run(fn, group: str, **extra_info):
        benchmark.group = group
        benchmark.extra_info.update(extra_info)

        def call():
            fn()
            if DEVICE.type == "cuda":
                torch.cuda.synchronize(DEVICE)
        return benchmark(call)
    return run


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    machine_info["device"] = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else platform.processor()
    machine_info["torch_threads"] = torch.get_num_threads()
