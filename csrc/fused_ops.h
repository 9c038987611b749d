#pragma once
// The host-side pieces both kernel sets share (defined in fused_ops.cpp; the CPU kernels are there too, the CUDA ones
// in cuda/fused_ops_kernel.cu).
//
// mixed_sum_into(x[K], w[K], normalize[K], running_mean?, running_var?, training, eps, out) -> (mean[K,C], var[K,C])
// writes y into out (a new tensor, or a node's slice of its cell's output):
//   y = sum_k w_k * o_k,   o_k = (x_k - mean_kc) * rstd_kc  if normalize[k]  else x_k
// A normalized term is the input of a trailing BatchNorm(affine=False) folded into the sum: in training the batch
// statistics are computed here (and returned, so the caller can update running statistics once), in eval the
// running ones are used. The BN output o_k is never stored. Channels are dim 1 of x (N, C, ...).
#include <ATen/core/Tensor.h>
#include <ATen/core/List.h>
#include <c10/util/Optional.h>

#include <functional>
#include <vector>

namespace stacnas {

struct MixedSumShape {
  int64_t outer;     // N
  int64_t channels;  // C
  int64_t inner;     // H*W (product of the dims after the channel dim)
  int64_t per_channel() const { return outer * inner; }
};

// (N, C, inner) of x: channels are dim 1.
MixedSumShape layout_of(const at::Tensor& x);

// Checks the arguments and returns the layout; every x_k must have x_0's shape, dtype and device, w (any floating
// dtype, possibly wider than the inputs') their device.
MixedSumShape check_mixed_sum_args(const std::vector<at::Tensor>& x, const at::Tensor& w,
                                   const std::vector<bool>& normalize);

std::vector<at::Tensor> contiguous_all(at::TensorList xs);

// The dtype BatchNorm statistics of x are returned in: float32 for half-precision x (as PyTorch's BN keeps its
// running statistics under autocast), x's own dtype otherwise.
inline at::ScalarType statistics_dtype(const at::Tensor& x) {
  return at::promote_types(x.scalar_type(), at::kFloat);
}

// The schema's bool[] as a plain vector.
std::vector<bool> flags(const c10::List<bool>& list);

// rstd_kc = 1/sqrt(var_kc + eps) for normalized terms, 1 otherwise; float64 on var's device.
at::Tensor mixed_sum_rstd(const at::Tensor& var, const std::vector<bool>& normalize, double eps);

// The statistics the forward pass normalizes with, as float64 (K, C) on x's device: from the batch in training
// (mean_fn computes them for one normalized input), from the running statistics in eval; 0 and 1 for plain rows.
std::pair<at::Tensor, at::Tensor> mixed_sum_stats(
    const std::vector<at::Tensor>& x, const std::vector<bool>& normalize, const c10::optional<at::Tensor>& running_mean,
    const c10::optional<at::Tensor>& running_var, bool training, int64_t C,
    const std::function<std::pair<at::Tensor, at::Tensor>(const at::Tensor&)>& batch_stats);

// The forward pass's scales a_kc = w_k rstd_kc (rstd 1 for terms not normalized), float64, contiguous, on var's
// device: y = sum_k a_kc (x_k - mean_kc).
at::Tensor mixed_sum_scales(const at::Tensor& w, const at::Tensor& var, const std::vector<bool>& normalize,
                            double eps);

// The distance between samples of `out`, the destination of mixed_sum_into: shaped, typed and placed like x0, with
// each sample's (C, ...) block contiguous (a channel slice of a contiguous (N, C', ...) cell output qualifies).
int64_t sample_stride(const at::Tensor& out, const at::Tensor& x0);

// mixed_sum_backward's grad (shaped, typed and placed like the inputs) and statistics ((K, C), on their device).
void check_mixed_sum_backward_args(const at::Tensor& grad, const at::Tensor& x0, const at::Tensor& mean,
                                   const at::Tensor& var, int64_t K);

// Argument checks of the other kernels (the CPU and CUDA ones alike): shapes, dtypes and devices, as ATen checks
// them, so that no kernel reads or writes outside its tensors.
void check_same_kind(const at::Tensor& t, const at::Tensor& like, const char* op, const char* name);
void check_max_pool_backward_args(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& output,
                                  at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding);
void check_batch_norm_input(const at::Tensor& x, const char* op);
void check_batch_norm_relu_backward_args(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mean,
                                         const at::Tensor& var);

// Coefficients of the backward pass, float64 on S's device, from the channel sums S_c = sum g, T_kc = sum g x_k:
//   dw_k = sum_c rstd_kc (T_kc - mean_kc S_c)
//   dx_k = A_kc g + P_kc x_k + Q_kc   (training BN: dx = w rstd (g - S/n - xhat * sum(g xhat)/n); else w rstd g)
struct MixedSumBackwardCoefficients {
  at::Tensor dw, A, P, Q;
};
MixedSumBackwardCoefficients mixed_sum_backward_coefficients(const at::Tensor& S, const at::Tensor& T,
                                                             const at::Tensor& w, const std::vector<bool>& normalize,
                                                             const at::Tensor& mean, const at::Tensor& var,
                                                             bool training, double eps, int64_t n);

}  // namespace stacnas
