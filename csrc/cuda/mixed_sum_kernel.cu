// CUDA kernels of stacnas::mixed_sum and its backward (schemas and math in csrc/mixed_sum.cpp).
//
// Forward: one grid-stride pass over y; up to kMaxK input pointers travel by value in the launch, more inputs are
// handled in chunks that accumulate into y. Backward: one block per (channel, slice of N*H*W) writes dx_k for
// every k and its partial channel sums into a buffer; at::sum finishes them, so the result is deterministic
// (no atomics).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../mixed_sum.h"

namespace stacnas {
namespace {

constexpr int kMaxK = 8;
constexpr int kThreads = 256;

template <typename T>
struct Ptrs {
  T p[kMaxK];
};

template <typename scalar_t, typename acc_t>
__global__ void mixed_sum_kernel(Ptrs<const scalar_t*> x, const acc_t* __restrict__ a, const acc_t* __restrict__ b,
                                 int K, int64_t C, int64_t inner, bool accumulate, scalar_t* __restrict__ y,
                                 int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = (i / inner) % C;
    acc_t acc = accumulate ? static_cast<acc_t>(y[i]) : b[c];
    for (int k = 0; k < K; ++k) acc += a[k * C + c] * static_cast<acc_t>(x.p[k][i]);
    y[i] = static_cast<scalar_t>(acc);
  }
}

// grid: (C, slices). Each block walks its slice of the channel's N*inner elements.
template <typename scalar_t, typename acc_t>
__global__ void mixed_sum_backward_kernel(const scalar_t* __restrict__ g, Ptrs<const scalar_t*> x,
                                          Ptrs<scalar_t*> dx, const acc_t* __restrict__ a, int K, int64_t C,
                                          int64_t N, int64_t inner, double* __restrict__ partial) {
  __shared__ double shared[kThreads];
  const int64_t c = blockIdx.x;
  const int64_t per_channel = N * inner;
  double sums[kMaxK + 1] = {0};  // sums[0] = S, sums[1 + k] = T_k
  for (int64_t j = blockIdx.y * (int64_t)blockDim.x + threadIdx.x; j < per_channel;
       j += (int64_t)gridDim.y * blockDim.x) {
    const int64_t i = ((j / inner) * C + c) * inner + j % inner;
    const acc_t gi = static_cast<acc_t>(g[i]);
    sums[0] += static_cast<double>(gi);
    for (int k = 0; k < K; ++k) {
      dx.p[k][i] = static_cast<scalar_t>(a[k * C + c] * gi);
      sums[1 + k] += static_cast<double>(gi) * static_cast<double>(x.p[k][i]);
    }
  }
  for (int k = 0; k <= K; ++k) {
    shared[threadIdx.x] = sums[k];
    __syncthreads();
    for (int s = kThreads / 2; s > 0; s >>= 1) {
      if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
      __syncthreads();
    }
    // partial layout: (K + 1, C, slices)
    if (threadIdx.x == 0) partial[(k * C + c) * gridDim.y + blockIdx.y] = shared[0];
    __syncthreads();
  }
}

at::Tensor mixed_sum_cuda(at::TensorList x_in, const at::Tensor& w, const c10::optional<at::Tensor>& mean,
                          const c10::optional<at::Tensor>& rstd) {
  const auto x = contiguous_all(x_in);
  const auto s = check_mixed_sum_args(x, w, mean, rstd);
  const c10::cuda::CUDAGuard guard(w.device());
  const int K = static_cast<int>(x.size());
  const int64_t C = s.channels;
  auto y = at::empty_like(x[0], at::MemoryFormat::Contiguous);
  const int64_t n = y.numel();
  if (n == 0) return y;
  const auto coef = mixed_sum_coefficients(w, mean, rstd, K, C);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, 65535);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "mixed_sum_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto coef_dev = coef.to(y.device(), c10::CppTypeToScalarType<acc_t>::value);
    const acc_t* a = coef_dev.const_data_ptr<acc_t>();
    for (int k0 = 0; k0 < K; k0 += kMaxK) {
      Ptrs<const scalar_t*> src{};
      const int chunk = std::min(kMaxK, K - k0);
      for (int k = 0; k < chunk; ++k) src.p[k] = x[k0 + k].const_data_ptr<scalar_t>();
      mixed_sum_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
          src, a + k0 * C, a + K * C, chunk, C, s.inner, k0 > 0, y.mutable_data_ptr<scalar_t>(), n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return y;
}

std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor, at::Tensor> mixed_sum_backward_cuda(
    const at::Tensor& grad_in, at::TensorList x_in, const at::Tensor& w, const c10::optional<at::Tensor>& mean,
    const c10::optional<at::Tensor>& rstd) {
  const auto x = contiguous_all(x_in);
  const auto s = check_mixed_sum_args(x, w, mean, rstd);
  const c10::cuda::CUDAGuard guard(w.device());
  const auto grad = grad_in.contiguous();
  TORCH_CHECK(grad.sizes() == x[0].sizes(), "mixed_sum_backward: grad shape ", grad.sizes(),
              " differs from the inputs' ", x[0].sizes());
  const int K = static_cast<int>(x.size());
  const int64_t C = s.channels;
  std::vector<at::Tensor> grad_x;
  for (int k = 0; k < K; ++k) grad_x.push_back(at::empty_like(grad, at::MemoryFormat::Contiguous));
  const int64_t per_channel = s.outer * s.inner;
  const int64_t slices = std::max<int64_t>(1, std::min<int64_t>((per_channel + kThreads * 4 - 1) / (kThreads * 4), 64));
  auto S = at::zeros({C}, grad.options().dtype(at::kDouble));
  auto T = at::zeros({K, C}, grad.options().dtype(at::kDouble));
  if (per_channel > 0 && C > 0) {
    const auto coef = mixed_sum_coefficients(w, mean, rstd, K, C);
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "mixed_sum_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto coef_dev = coef.to(grad.device(), c10::CppTypeToScalarType<acc_t>::value);
      for (int k0 = 0; k0 < K; k0 += kMaxK) {
        const int chunk = std::min(kMaxK, K - k0);
        Ptrs<const scalar_t*> src{};
        Ptrs<scalar_t*> dst{};
        for (int k = 0; k < chunk; ++k) {
          src.p[k] = x[k0 + k].const_data_ptr<scalar_t>();
          dst.p[k] = grad_x[k0 + k].mutable_data_ptr<scalar_t>();
        }
        auto partial = at::empty({chunk + 1, C, slices}, grad.options().dtype(at::kDouble));
        mixed_sum_backward_kernel<scalar_t, acc_t><<<dim3(C, slices), kThreads, 0, stream>>>(
            grad.const_data_ptr<scalar_t>(), src, dst, coef_dev.const_data_ptr<acc_t>() + k0 * C, chunk, C,
            s.outer, s.inner, partial.mutable_data_ptr<double>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        const auto sums = partial.sum(2);
        if (k0 == 0) S.copy_(sums[0]);
        T.narrow(0, k0, chunk).copy_(sums.narrow(0, 1, chunk));
      }
    });
  }
  auto [grad_w, grad_mean, grad_rstd] = mixed_sum_parameter_grads(S, T, w, mean, rstd);
  return {grad_x, grad_w, grad_mean, grad_rstd};
}

}  // namespace

TORCH_LIBRARY_IMPL(stacnas, CUDA, m) {
  m.impl("mixed_sum", &mixed_sum_cuda);
  m.impl("mixed_sum_backward", &mixed_sum_backward_cuda);
}

}  // namespace stacnas
