// CUDA kernels of the fused ops. Their schemas are in csrc/fused_ops.cpp; the host-side math they share with the
// CPU kernels (argument checks, statistics, coefficients) is declared in csrc/fused_ops.h and defined there too.
//
// Channel sums (batch statistics; S and T of the backward) run on a (C, slices) grid: each block reduces its
// slice of one channel into a partial buffer that at::sum finishes, so results are deterministic (no atomics).
// Elementwise passes are grid-stride loops; up to kMaxK input pointers travel by value in a launch, more inputs
// are handled in chunks.
#include <ATen/Dispatch.h>
#include <ATen/NumericUtils.h>
#include <ATen/OpMathType.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../fused_ops.h"

namespace stacnas {
namespace {

constexpr int kMaxK = 8;
constexpr int kThreads = 256;

template <typename T>
struct Ptrs {
  T p[kMaxK];
};

__device__ __forceinline__ int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
__device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

int64_t grid_for(int64_t n) { return std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 65535)); }

int64_t slices_for(int64_t per_channel) {
  return std::max<int64_t>(1, std::min<int64_t>((per_channel + kThreads * 4 - 1) / (kThreads * 4), 64));
}

__device__ double block_sum(double v, double* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  const double total = shared[0];
  __syncthreads();
  return total;
}

// Channel sums over (N, inner) of a (N, C, inner) layout. partial: (1 + K, C, slices): term 0 = sum a,
// term 1 + k = sum a * b_k.
template <typename scalar_t>
__global__ void channel_sums_kernel(const scalar_t* __restrict__ a, Ptrs<const scalar_t*> b, int K, int64_t C,
                                    int64_t N, int64_t inner, double* __restrict__ partial) {
  __shared__ double shared[kThreads];
  const int64_t c = blockIdx.x;
  double sums[kMaxK + 1] = {0};
  for (int64_t j = blockIdx.y * (int64_t)blockDim.x + threadIdx.x; j < N * inner; j += (int64_t)gridDim.y * blockDim.x) {
    const int64_t i = ((j / inner) * C + c) * inner + j % inner;
    const double ai = static_cast<double>(a[i]);
    sums[0] += ai;
    for (int k = 0; k < K; ++k) sums[1 + k] += ai * static_cast<double>(b.p[k][i]);
  }
  for (int k = 0; k <= K; ++k) {
    const double total = block_sum(sums[k], shared);
    if (threadIdx.x == 0) partial[(k * C + c) * gridDim.y + blockIdx.y] = total;
  }
}

// y = sum_k a_kc (x_k - m_kc) (accumulate: y += it): centred, as BatchNorm is defined (a_k x_k + b would lose the
// digits b cancels where a mean is large); samples of y lie y_stride elements apart
template <typename scalar_t, typename acc_t>
__global__ void mixed_sum_kernel(Ptrs<const scalar_t*> x, const acc_t* __restrict__ a, const acc_t* __restrict__ m,
                                 int K, int64_t C, int64_t inner, bool accumulate, scalar_t* __restrict__ y,
                                 int64_t y_stride, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = (i / inner) % C;
    const int64_t out = (i / (C * inner)) * y_stride + i % (C * inner);
    acc_t acc = accumulate ? static_cast<acc_t>(y[out]) : acc_t(0);
    for (int k = 0; k < K; ++k) acc += a[k * C + c] * (static_cast<acc_t>(x.p[k][i]) - m[k * C + c]);
    y[out] = static_cast<scalar_t>(acc);
  }
}

// dx_k = A_kc g + P_kc x_k + Q_kc
template <typename scalar_t, typename acc_t>
__global__ void mixed_sum_grad_kernel(const scalar_t* __restrict__ g, Ptrs<const scalar_t*> x, Ptrs<scalar_t*> dx,
                                      const acc_t* __restrict__ A, const acc_t* __restrict__ P,
                                      const acc_t* __restrict__ Q, int K, int64_t C, int64_t inner, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = (i / inner) % C;
    const acc_t gi = static_cast<acc_t>(g[i]);
    for (int k = 0; k < K; ++k)
      dx.p[k][i] = static_cast<scalar_t>(A[k * C + c] * gi + P[k * C + c] * static_cast<acc_t>(x.p[k][i]) +
                                         Q[k * C + c]);
  }
}

// Sums of a and of a * b_k per channel, as float64 (1 + K, C).
at::Tensor channel_sums(const at::Tensor& a, const std::vector<at::Tensor>& b, const MixedSumShape& s) {
  const int K = static_cast<int>(b.size());
  const int64_t slices = slices_for(s.per_channel());
  auto out = at::zeros({1 + K, s.channels}, a.options().dtype(at::kDouble));
  if (s.per_channel() == 0 || s.channels == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "channel_sums_cuda", [&] {
    for (int k0 = 0; k0 < std::max(K, 1); k0 += kMaxK) {
      const int chunk = std::min(kMaxK, K - k0);
      Ptrs<const scalar_t*> src{};
      for (int k = 0; k < chunk; ++k) src.p[k] = b[k0 + k].const_data_ptr<scalar_t>();
      auto partial = at::empty({1 + std::max(chunk, 0), s.channels, slices}, out.options());
      channel_sums_kernel<scalar_t><<<dim3(s.channels, slices), kThreads, 0, stream>>>(
          a.const_data_ptr<scalar_t>(), src, std::max(chunk, 0), s.channels, s.outer, s.inner,
          partial.mutable_data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const auto sums = partial.sum(2);
      if (k0 == 0) out[0].copy_(sums[0]);
      if (chunk > 0) out.narrow(0, 1 + k0, chunk).copy_(sums.narrow(0, 1, chunk));
    }
  });
  return out;
}

// Writes y into `y` (contiguous, or batch-strided: see sample_stride) and returns (mean, var).
std::tuple<at::Tensor, at::Tensor> mixed_sum_into_cuda(at::TensorList x_in, const at::Tensor& w,
                                                       const c10::List<bool>& normalize_list,
                                                       const c10::optional<at::Tensor>& running_mean,
                                                       const c10::optional<at::Tensor>& running_var, bool training,
                                                       double eps, const at::Tensor& y) {
  const auto x = contiguous_all(x_in);
  const auto normalize = flags(normalize_list);
  const auto s = check_mixed_sum_args(x, w, normalize);
  const int64_t y_stride = sample_stride(y, x[0]);
  const c10::cuda::CUDAGuard guard(w.device());
  const int K = static_cast<int>(x.size());
  const int64_t C = s.channels;
  auto [mean, var] = mixed_sum_stats(x, normalize, running_mean, running_var, training, C, [&](const at::Tensor& t) {
    const auto sums = channel_sums(t, {t}, s);  // sum t and sum t*t in one pass
    const double count = static_cast<double>(std::max<int64_t>(s.per_channel(), 1));
    auto m = sums[0] / count;
    return std::make_pair(m, (sums[1] / count - m * m).clamp_min(0.0));
  });
  const auto a_all = mixed_sum_scales(w, var, normalize, eps);
  const int64_t n = y.numel();
  if (n > 0) {
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "mixed_sum_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto a = a_all.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
      const auto m = mean.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
      for (int k0 = 0; k0 < K; k0 += kMaxK) {
        const int chunk = std::min(kMaxK, K - k0);
        Ptrs<const scalar_t*> src{};
        for (int k = 0; k < chunk; ++k) src.p[k] = x[k0 + k].const_data_ptr<scalar_t>();
        mixed_sum_kernel<scalar_t, acc_t><<<grid_for(n), kThreads, 0, stream>>>(
            src, a.const_data_ptr<acc_t>() + k0 * C, m.const_data_ptr<acc_t>() + k0 * C, chunk, C, s.inner, k0 > 0,
            y.mutable_data_ptr<scalar_t>(), y_stride, n);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  return {mean.to(w.scalar_type()), var.to(w.scalar_type())};
}

std::tuple<std::vector<at::Tensor>, at::Tensor> mixed_sum_backward_cuda(
    const at::Tensor& grad_in, at::TensorList x_in, const at::Tensor& w, const c10::List<bool>& normalize_list,
    const at::Tensor& mean, const at::Tensor& var, bool training, double eps) {
  const auto x = contiguous_all(x_in);
  const auto normalize = flags(normalize_list);
  const auto s = check_mixed_sum_args(x, w, normalize);
  const c10::cuda::CUDAGuard guard(w.device());
  const auto grad = grad_in.contiguous();
  const int K = static_cast<int>(x.size());
  check_mixed_sum_backward_args(grad, x[0], mean, var, K);
  const int64_t C = s.channels;
  const auto sums = channel_sums(grad, x, s);
  const auto coef = mixed_sum_backward_coefficients(sums[0], sums.narrow(0, 1, K), w, normalize, mean, var, training,
                                                    eps, s.per_channel());
  std::vector<at::Tensor> grad_x;
  for (int k = 0; k < K; ++k) grad_x.push_back(at::empty_like(grad, at::MemoryFormat::Contiguous));
  const int64_t n = grad.numel();
  if (n > 0) {
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "mixed_sum_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto A = coef.A.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
      const auto P = coef.P.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
      const auto Q = coef.Q.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
      for (int k0 = 0; k0 < K; k0 += kMaxK) {
        const int chunk = std::min(kMaxK, K - k0);
        Ptrs<const scalar_t*> src{};
        Ptrs<scalar_t*> dst{};
        for (int k = 0; k < chunk; ++k) {
          src.p[k] = x[k0 + k].const_data_ptr<scalar_t>();
          dst.p[k] = grad_x[k0 + k].mutable_data_ptr<scalar_t>();
        }
        mixed_sum_grad_kernel<scalar_t, acc_t><<<grid_for(n), kThreads, 0, stream>>>(
            grad.const_data_ptr<scalar_t>(), src, dst, A.const_data_ptr<acc_t>() + k0 * C,
            P.const_data_ptr<acc_t>() + k0 * C, Q.const_data_ptr<acc_t>() + k0 * C, chunk, C, s.inner, n);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  return {grad_x, coef.dw.to(w.scalar_type())};
}

// One thread per input element gathers the gradient of every window whose argmax it is (the first maximum in
// row-major order, or the last NaN): deterministic, no atomics, no indices kept.
template <typename scalar_t>
__global__ void max_pool_backward_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ in,
                                         const scalar_t* __restrict__ out, scalar_t* __restrict__ gi, int64_t planes,
                                         int64_t H, int64_t W, int64_t OH, int64_t OW, int kh, int kw, int sh, int sw,
                                         int ph, int pw) {
  const int64_t total = planes * H * W;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t p = idx / (H * W), ih = (idx / W) % H, iw = idx % W;
    const scalar_t* inp = in + p * H * W;
    using acc_t = at::opmath_type<scalar_t>;
    acc_t acc = 0;
    const int64_t oh0 = imax(0, (ih + ph - kh + sh) / sh), oh1 = imin(OH - 1, (ih + ph) / sh);
    const int64_t ow0 = imax(0, (iw + pw - kw + sw) / sw), ow1 = imin(OW - 1, (iw + pw) / sw);
    for (int64_t oh = oh0; oh <= oh1; ++oh) {
      for (int64_t ow = ow0; ow <= ow1; ++ow) {
        const scalar_t target = out[(p * OH + oh) * OW + ow];
        const bool nan = at::_isnan(target);
        const int64_t h0 = imax(oh * sh - ph, 0), h1 = imin(oh * sh - ph + kh, H);
        const int64_t w0 = imax(ow * sw - pw, 0), w1 = imin(ow * sw - pw + kw, W);
        int64_t arg = h0 * W + w0;
        bool found = false;
        for (int64_t y = h0; y < h1 && (nan || !found); ++y)
          for (int64_t x = w0; x < w1 && (nan || !found); ++x) {
            const scalar_t v = inp[y * W + x];
            if (nan ? at::_isnan(v) : v == target) {
              arg = y * W + x;
              found = true;
            }
          }
        if (arg == ih * W + iw) acc += static_cast<acc_t>(g[(p * OH + oh) * OW + ow]);
      }
    }
    gi[idx] = static_cast<scalar_t>(acc);
  }
}

at::Tensor max_pool2d_backward_from_output_cuda(const at::Tensor& grad_in, const at::Tensor& input_in,
                                                const at::Tensor& output_in, at::IntArrayRef kernel_size,
                                                at::IntArrayRef stride, at::IntArrayRef padding) {
  check_max_pool_backward_args(grad_in, input_in, output_in, kernel_size, stride, padding);
  const c10::cuda::CUDAGuard guard(input_in.device());
  const auto input = input_in.contiguous(), output = output_in.contiguous(), grad = grad_in.contiguous();
  auto grad_input = at::empty_like(input, at::MemoryFormat::Contiguous);
  const int64_t planes = input.size(0) * input.size(1), H = input.size(2), W = input.size(3);
  if (grad_input.numel() == 0) return grad_input;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "max_pool_backward_cuda", [&] {
    max_pool_backward_kernel<scalar_t><<<grid_for(grad_input.numel()), kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(), output.const_data_ptr<scalar_t>(),
        grad_input.mutable_data_ptr<scalar_t>(), planes, H, W, output.size(2), output.size(3), kernel_size[0],
        kernel_size[1], stride[0], stride[1], padding[0], padding[1]);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_input;
}

std::tuple<at::Tensor, at::Tensor> batch_norm_stats_cuda(const at::Tensor& x_in) {
  check_batch_norm_input(x_in, "batch_norm_stats");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous();
  const auto s = layout_of(x);
  const auto sums = channel_sums(x, {x}, s);
  const double count = static_cast<double>(std::max<int64_t>(s.per_channel(), 1));
  const auto mean = sums[0] / count;
  return {mean.to(statistics_dtype(x)), (sums[1] / count - mean * mean).clamp_min(0.0).to(statistics_dtype(x))};
}

// Per channel: sum gm and sum gm * xhat, gm = grad where xhat = (x - mean) rstd > 0. partial: (2, C, slices).
template <typename scalar_t>
__global__ void relu_masked_sums_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                        const double* __restrict__ mean, const double* __restrict__ rstd, int64_t C,
                                        int64_t N, int64_t inner, double* __restrict__ partial) {
  __shared__ double shared[kThreads];
  const int64_t c = blockIdx.x;
  double sg = 0, sgx = 0;
  for (int64_t j = blockIdx.y * (int64_t)blockDim.x + threadIdx.x; j < N * inner; j += (int64_t)gridDim.y * blockDim.x) {
    const int64_t i = ((j / inner) * C + c) * inner + j % inner;
    const double xhat = (static_cast<double>(x[i]) - mean[c]) * rstd[c];
    if (xhat > 0) {
      sg += static_cast<double>(g[i]);
      sgx += static_cast<double>(g[i]) * xhat;
    }
  }
  const double a = block_sum(sg, shared), b = block_sum(sgx, shared);
  if (threadIdx.x == 0) {
    partial[c * gridDim.y + blockIdx.y] = a;
    partial[(C + c) * gridDim.y + blockIdx.y] = b;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void batch_norm_relu_grad_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                            const acc_t* __restrict__ coef, int64_t C, int64_t inner,
                                            scalar_t* __restrict__ dx, int64_t n) {
  // coef: (mean, rstd, sum_gm / count, sum_gm_xhat / count), C entries each
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = (i / inner) % C;
    const acc_t r = coef[C + c];
    const acc_t xhat = (static_cast<acc_t>(x[i]) - coef[c]) * r;
    const acc_t gm = xhat > 0 ? static_cast<acc_t>(g[i]) : acc_t(0);
    dx[i] = static_cast<scalar_t>(r * (gm - coef[2 * C + c] - xhat * coef[3 * C + c]));
  }
}

at::Tensor batch_norm_relu_backward_cuda(const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& mean,
                                         const at::Tensor& var, bool training, double eps) {
  check_batch_norm_relu_backward_args(grad_in, x_in, mean, var);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous(), grad = grad_in.contiguous();
  const auto s = layout_of(x);
  const int64_t C = s.channels;
  const auto md = mean.to(at::kDouble).contiguous(), rd = (var.to(at::kDouble) + eps).rsqrt().contiguous();
  auto sums = at::zeros({2, C}, md.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  auto grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return grad_x;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_relu_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (training) {
      const int64_t slices = slices_for(s.per_channel());
      auto partial = at::empty({2, C, slices}, md.options());
      relu_masked_sums_kernel<scalar_t><<<dim3(C, slices), kThreads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), md.const_data_ptr<double>(),
          rd.const_data_ptr<double>(), C, s.outer, s.inner, partial.mutable_data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      sums = partial.sum(2) / static_cast<double>(std::max<int64_t>(s.per_channel(), 1));
    }
    const auto coef = at::cat({md, rd, sums[0], sums[1]}).to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    batch_norm_relu_grad_kernel<scalar_t, acc_t><<<grid_for(x.numel()), kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), coef.const_data_ptr<acc_t>(), C, s.inner,
        grad_x.mutable_data_ptr<scalar_t>(), x.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(stacnas, CUDA, m) {
  m.impl("mixed_sum_into", &mixed_sum_into_cuda);
  m.impl("mixed_sum_backward", &mixed_sum_backward_cuda);
  m.impl("max_pool2d_backward_from_output", &max_pool2d_backward_from_output_cuda);
  m.impl("batch_norm_stats", &batch_norm_stats_cuda);
  m.impl("batch_norm_relu_backward", &batch_norm_relu_backward_cuda);
}

}  // namespace stacnas
