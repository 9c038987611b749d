"""Builds the extension stacnas._C from csrc/: the C++ CPU kernels always; the CUDA kernels when FORCE_CUDA=1,
TORCH_CUDA_ARCH_LIST is set, or a GPU is visible. Install with `pip install --no-build-isolation .` so the
build uses the torch that is already installed."""
import glob
import os
import shutil

import pybind11
from setuptools import find_packages, setup

import torch


def find_cuda_home():
    """CUDA_HOME as set, else the toolkit root holding nvcc. torch guesses it from the nvcc on PATH, which can
    be a wrapper script outside the toolkit (then linking fails with 'cannot find -lcudart')."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    candidates = ["/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for root in candidates:
        if os.path.isfile(os.path.join(root, "bin", "nvcc")) and os.path.isdir(os.path.join(root, "include")):
            return root
    return None


def want_cuda():
    if os.environ.get("FORCE_CUDA", "0") == "1" or os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return True
    return torch.cuda.is_available()


cuda_home = find_cuda_home()
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home
build_cuda = want_cuda()
if build_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
    # With no GPU and no list, torch's arch detection crashes; 9.0 is the H100/H200 generation.
    os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
os.environ.setdefault("MAX_JOBS", str(max(1, os.cpu_count() or 1)))

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402 (needs CUDA_HOME)

cxx_flags = ["-O3", "-fopenmp"]  # torch picks the C++ standard (C++20 for torch 2.14)
sources = sorted(glob.glob("csrc/*.cpp"))
if build_cuda:
    if cuda_home is None:
        raise SystemExit("stacnas: a CUDA build was asked for but no CUDA toolkit was found; set CUDA_HOME")
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    extension = CUDAExtension(
        "stacnas._C", sources, include_dirs=[pybind11.get_include()],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]}, extra_link_args=["-fopenmp"])
else:
    extension = CppExtension("stacnas._C", sources, include_dirs=[pybind11.get_include()],
                             extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"])

print(f"stacnas build: torch {torch.__version__}; C++ CPU kernels: yes; CUDA kernels: "
      + (f"yes (CUDA_HOME={cuda_home}, TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')})"
         if build_cuda else "no (set FORCE_CUDA=1 or TORCH_CUDA_ARCH_LIST to build them)"))

setup(
    packages=[*find_packages(include=["stacnas", "stacnas.*"]), "stacnas.kernels"],
    package_dir={"stacnas": "stacnas", "stacnas.kernels": "kernels"},
    package_data={"stacnas": ["presets/*.yaml"]},
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtension},
)
