// The Python module stacnas._C. Importing it loads this library, whose TORCH_LIBRARY blocks (fused_ops.cpp,
// cuda/fused_ops_kernel.cu) register the ops as torch.ops.stacnas.*; the module itself only tells which torch it was
// compiled against, so that a build for another torch that still loads is reported as stale instead of misbehaving.
#include <pybind11/pybind11.h>
#include <torch/headeronly/version.h>

PYBIND11_MODULE(_C, m) {
  m.doc() = "stacnas' fused ops, registered with PyTorch's dispatcher as torch.ops.stacnas.*";
  m.attr("torch_version") = TORCH_VERSION;
}
