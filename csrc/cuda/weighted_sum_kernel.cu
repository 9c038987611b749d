// CUDA kernels of stacnas::weighted_sum and its backward (schemas in csrc/weighted_sum.cpp).
//
// Up to kMaxK candidate pointers travel by value in the launch; more candidates are handled in chunks that
// accumulate into y. The weight gradient is reduced per block into a (K, blocks) buffer and summed by
// at::sum, so it is deterministic (no atomics).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../weighted_sum.h"

namespace stacnas {
namespace {

constexpr int kMaxK = 8;
constexpr int kThreads = 256;

template <typename scalar_t>
struct Ptrs {
  const scalar_t* p[kMaxK];
};

template <typename scalar_t, typename acc_t>
__global__ void weighted_sum_kernel(Ptrs<scalar_t> src, const scalar_t* __restrict__ w, int K, bool accumulate,
                                    scalar_t* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    acc_t acc = accumulate ? static_cast<acc_t>(y[i]) : acc_t(0);
    for (int k = 0; k < K; ++k) acc += static_cast<acc_t>(w[k]) * static_cast<acc_t>(src.p[k][i]);
    y[i] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void weighted_sum_backward_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ o,
                                             acc_t w, scalar_t* __restrict__ go, acc_t* __restrict__ partial,
                                             int64_t n) {
  __shared__ acc_t shared[kThreads];
  acc_t dot = 0;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const acc_t gi = static_cast<acc_t>(g[i]);
    go[i] = static_cast<scalar_t>(w * gi);
    dot += gi * static_cast<acc_t>(o[i]);
  }
  shared[threadIdx.x] = dot;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = shared[0];
}

int64_t grid_for(int64_t n) {
  return std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 65535));
}

at::Tensor weighted_sum_cuda(at::TensorList outputs_in, const at::Tensor& weights_in) {
  std::vector<at::Tensor> outputs;
  for (const auto& o : outputs_in) outputs.push_back(o.contiguous());
  check_weighted_sum_args(outputs, weights_in);
  const c10::cuda::CUDAGuard guard(weights_in.device());
  const auto weights = weights_in.contiguous();
  auto y = at::empty_like(outputs[0], at::MemoryFormat::Contiguous);
  const int64_t n = y.numel();
  const int K = static_cast<int>(outputs.size());
  if (n == 0) return y;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "weighted_sum_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    for (int k0 = 0; k0 < K; k0 += kMaxK) {
      Ptrs<scalar_t> src{};
      const int chunk = std::min(kMaxK, K - k0);
      for (int k = 0; k < chunk; ++k) src.p[k] = outputs[k0 + k].const_data_ptr<scalar_t>();
      weighted_sum_kernel<scalar_t, acc_t><<<grid_for(n), kThreads, 0, stream>>>(
          src, weights.const_data_ptr<scalar_t>() + k0, chunk, k0 > 0, y.mutable_data_ptr<scalar_t>(), n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return y;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> weighted_sum_backward_cuda(const at::Tensor& grad_in,
                                                                           at::TensorList outputs_in,
                                                                           const at::Tensor& weights_in) {
  std::vector<at::Tensor> outputs;
  for (const auto& o : outputs_in) outputs.push_back(o.contiguous());
  check_weighted_sum_args(outputs, weights_in);
  const c10::cuda::CUDAGuard guard(weights_in.device());
  const auto grad = grad_in.contiguous();
  TORCH_CHECK(grad.sizes() == outputs[0].sizes(), "weighted_sum_backward: grad shape ", grad.sizes(),
              " differs from the outputs' ", outputs[0].sizes());
  const auto w_host = weights_in.to(at::kDouble).cpu();
  const int64_t n = grad.numel();
  const int64_t K = static_cast<int64_t>(outputs.size());
  const int64_t blocks = grid_for(n);
  std::vector<at::Tensor> grad_outputs;
  for (int64_t k = 0; k < K; ++k) grad_outputs.push_back(at::empty_like(grad, at::MemoryFormat::Contiguous));
  const auto acc_type = at::toOpMathType(grad.scalar_type());
  auto partial = at::zeros({K, blocks}, grad.options().dtype(acc_type));
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (n > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "weighted_sum_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      for (int64_t k = 0; k < K; ++k) {
        weighted_sum_backward_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
            grad.const_data_ptr<scalar_t>(), outputs[k].const_data_ptr<scalar_t>(),
            static_cast<acc_t>(w_host.data_ptr<double>()[k]), grad_outputs[k].mutable_data_ptr<scalar_t>(),
            partial.mutable_data_ptr<acc_t>() + k * blocks, n);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  return {grad_outputs, partial.sum(1).to(weights_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(stacnas, CUDA, m) {
  m.impl("weighted_sum", &weighted_sum_cuda);
  m.impl("weighted_sum_backward", &weighted_sum_backward_cuda);
}

}  // namespace stacnas
