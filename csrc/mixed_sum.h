#pragma once
// Shared pieces of the mixed-sum kernels (CPU in mixed_sum.cpp, CUDA in cuda/mixed_sum_kernel.cu).
//
// mixed_sum(x[K], w[K], mean[K,C]?, rstd[K,C]?)  y = sum_k w_k * (x_k - mean_kc) * rstd_kc
//
// With mean/rstd absent it is the plain weighted sum of DARTS' MixedOp. With the batch statistics of a trailing
// BatchNorm(affine=False) it folds that BN into the sum: x_k is the BN's input z_k and the normalized output is
// never stored. Channels are dim 1 of x (N, C, ...).
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <vector>

namespace stacnas {

struct MixedSumShape {
  int64_t outer;  // N
  int64_t channels;  // C
  int64_t inner;  // H*W (product of dims after the channel dim)
};

// Checks the arguments and returns the layout; every x_k must have x_0's shape, dtype and device.
MixedSumShape check_mixed_sum_args(const std::vector<at::Tensor>& x, const at::Tensor& w,
                                   const c10::optional<at::Tensor>& mean, const c10::optional<at::Tensor>& rstd);

std::vector<at::Tensor> contiguous_all(at::TensorList xs);

// Per-(k, c) coefficients of y = sum_k a_kc x_k + b_c, a_kc = w_k rstd_kc, b_c = -sum_k a_kc mean_kc, computed in
// double on the host; (a, b) as one float64 CPU tensor of K*C + C entries.
at::Tensor mixed_sum_coefficients(const at::Tensor& w, const c10::optional<at::Tensor>& mean,
                                  const c10::optional<at::Tensor>& rstd, int64_t K, int64_t C);

// dw, dmean, drstd from the channel sums S_c = sum g and T_kc = sum g x_k (float64, any device).
std::tuple<at::Tensor, at::Tensor, at::Tensor> mixed_sum_parameter_grads(
    const at::Tensor& S, const at::Tensor& T, const at::Tensor& w, const c10::optional<at::Tensor>& mean,
    const c10::optional<at::Tensor>& rstd);

}  // namespace stacnas
