#pragma once
#include <ATen/core/Tensor.h>

#include <vector>

namespace stacnas {
// Shared argument checks of the weighted-sum ops (CPU and CUDA kernels).
void check_weighted_sum_args(const std::vector<at::Tensor>& outputs, const at::Tensor& weights);
}  // namespace stacnas
