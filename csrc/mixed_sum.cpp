// stacnas._C: schemas of the fused ops and their CPU kernels.
//
// mixed_sum(x, w, mean?, rstd?)  y = sum_k w_k * (x_k - mean_kc) * rstd_kc      (see mixed_sum.h)
// mixed_sum_backward(g, x, w, mean?, rstd?) -> (dx, dw, dmean, drstd) with
//   dx_k = w_k rstd_kc g,  S_c = sum g,  T_kc = sum g x_k   (sums over N and H*W of channel c)
//   dw_k = sum_c rstd_kc (T_kc - mean_kc S_c),  dmean_kc = -w_k rstd_kc S_c,  drstd_kc = w_k (T_kc - mean_kc S_c)
// dw_k = <g, o_k> with o_k = (x_k - mean_k) rstd_k: the BN-folded output o_k is never needed.
//
// Channel sums accumulate in double, each channel in one thread, so results do not depend on the thread count.
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "mixed_sum.h"

extern "C" {
// Importing stacnas._C loads this library and so registers the ops below; it exposes no Python functions.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace stacnas {

std::vector<at::Tensor> contiguous_all(at::TensorList xs) {
  std::vector<at::Tensor> out;
  out.reserve(xs.size());
  for (const auto& x : xs) out.push_back(x.contiguous());
  return out;
}

MixedSumShape check_mixed_sum_args(const std::vector<at::Tensor>& x, const at::Tensor& w,
                                   const c10::optional<at::Tensor>& mean, const c10::optional<at::Tensor>& rstd) {
  TORCH_CHECK(!x.empty(), "mixed_sum: needs at least one input tensor");
  const auto K = static_cast<int64_t>(x.size());
  TORCH_CHECK(w.dim() == 1 && w.size(0) == K, "mixed_sum: weights must be 1-D with one entry per input, got shape ",
              w.sizes(), " for ", K, " inputs");
  for (const auto& t : x) {
    TORCH_CHECK(t.sizes() == x[0].sizes(), "mixed_sum: all inputs must have the same shape, got ", t.sizes(),
                " and ", x[0].sizes());
    TORCH_CHECK(t.scalar_type() == w.scalar_type() && t.device() == w.device(),
                "mixed_sum: inputs and weights must share dtype and device");
  }
  MixedSumShape s{1, 1, 1};
  if (x[0].dim() >= 1) s.outer = x[0].size(0);
  if (x[0].dim() >= 2) s.channels = x[0].size(1);
  s.inner = s.outer * s.channels == 0 ? 0 : x[0].numel() / (s.outer * s.channels);
  TORCH_CHECK(mean.has_value() == rstd.has_value(), "mixed_sum: give both mean and rstd, or neither");
  if (mean.has_value()) {
    for (const auto* t : {&*mean, &*rstd}) {
      TORCH_CHECK(t->dim() == 2 && t->size(0) == K && t->size(1) == s.channels,
                  "mixed_sum: mean and rstd must have shape (inputs, channels) = (", K, ", ", s.channels, "), got ",
                  t->sizes());
      TORCH_CHECK(t->scalar_type() == w.scalar_type() && t->device() == w.device(),
                  "mixed_sum: mean and rstd must share the inputs' dtype and device");
    }
  }
  return s;
}

at::Tensor mixed_sum_coefficients(const at::Tensor& w, const c10::optional<at::Tensor>& mean,
                                  const c10::optional<at::Tensor>& rstd, int64_t K, int64_t C) {
  const auto wd = w.to(at::kDouble).cpu().view({K, 1});
  const auto a = mean.has_value() ? (wd * rstd->to(at::kDouble).cpu()).contiguous() : wd.expand({K, C}).contiguous();
  const auto b = mean.has_value() ? -(a * mean->to(at::kDouble).cpu()).sum(0) : at::zeros({C}, a.options());
  return at::cat({a.view({K * C}), b});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mixed_sum_parameter_grads(
    const at::Tensor& S, const at::Tensor& T, const at::Tensor& w, const c10::optional<at::Tensor>& mean,
    const c10::optional<at::Tensor>& rstd) {
  const auto wd = w.to(at::kDouble).view({-1, 1});
  const auto centered = mean.has_value() ? T - mean->to(at::kDouble) * S.view({1, -1}) : T;
  const auto r = rstd.has_value() ? rstd->to(at::kDouble) : at::ones_like(T);
  const auto dtype = w.scalar_type();
  return {(r * centered).sum(1).to(dtype), (-wd * r * S.view({1, -1})).to(dtype), (wd * centered).to(dtype)};
}

namespace {

at::Tensor mixed_sum_cpu(at::TensorList x_in, const at::Tensor& w, const c10::optional<at::Tensor>& mean,
                         const c10::optional<at::Tensor>& rstd) {
  const auto x = contiguous_all(x_in);
  const auto s = check_mixed_sum_args(x, w, mean, rstd);
  const int64_t K = static_cast<int64_t>(x.size());
  const int64_t C = s.channels;
  auto y = at::empty_like(x[0], at::MemoryFormat::Contiguous);
  const auto coef = mixed_sum_coefficients(w, mean, rstd, K, C);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "mixed_sum_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto coef_acc = coef.to(c10::CppTypeToScalarType<acc_t>::value);
    const acc_t* a = coef_acc.const_data_ptr<acc_t>();
    const acc_t* b = a + K * C;
    std::vector<const scalar_t*> src(K);
    for (int64_t k = 0; k < K; ++k) src[k] = x[k].const_data_ptr<scalar_t>();
    scalar_t* dst = y.mutable_data_ptr<scalar_t>();
    // One (n, c) plane per task: the coefficients are constant along it.
    at::parallel_for(0, s.outer * C, 1, [&](int64_t p0, int64_t p1) {
      std::vector<acc_t> row(s.inner);
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t c = p % C;
        const int64_t base = p * s.inner;
        std::fill(row.begin(), row.end(), b[c]);
        for (int64_t k = 0; k < K; ++k) {
          const acc_t ak = a[k * C + c];
          const scalar_t* xk = src[k] + base;
          for (int64_t i = 0; i < s.inner; ++i) row[i] += ak * static_cast<acc_t>(xk[i]);
        }
        for (int64_t i = 0; i < s.inner; ++i) dst[base + i] = static_cast<scalar_t>(row[i]);
      }
    });
  });
  return y;
}

std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor, at::Tensor> mixed_sum_backward_cpu(
    const at::Tensor& grad_in, at::TensorList x_in, const at::Tensor& w, const c10::optional<at::Tensor>& mean,
    const c10::optional<at::Tensor>& rstd) {
  const auto x = contiguous_all(x_in);
  const auto s = check_mixed_sum_args(x, w, mean, rstd);
  const auto grad = grad_in.contiguous();
  TORCH_CHECK(grad.sizes() == x[0].sizes(), "mixed_sum_backward: grad shape ", grad.sizes(),
              " differs from the inputs' ", x[0].sizes());
  const int64_t K = static_cast<int64_t>(x.size());
  const int64_t C = s.channels;
  std::vector<at::Tensor> grad_x;
  for (int64_t k = 0; k < K; ++k) grad_x.push_back(at::empty_like(grad, at::MemoryFormat::Contiguous));
  auto S = at::zeros({C}, at::dtype(at::kDouble));
  auto T = at::zeros({K, C}, at::dtype(at::kDouble));
  const auto coef = mixed_sum_coefficients(w, mean, rstd, K, C);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "mixed_sum_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto coef_acc = coef.to(c10::CppTypeToScalarType<acc_t>::value);
    const acc_t* a = coef_acc.const_data_ptr<acc_t>();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    double* Sp = S.mutable_data_ptr<double>();
    double* Tp = T.mutable_data_ptr<double>();
    at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        for (int64_t n = 0; n < s.outer; ++n) {
          const int64_t base = (n * C + c) * s.inner;
          double sg = 0;
          for (int64_t i = 0; i < s.inner; ++i) sg += static_cast<double>(g[base + i]);
          Sp[c] += sg;
          for (int64_t k = 0; k < K; ++k) {
            const acc_t ak = a[k * C + c];
            const scalar_t* xk = x[k].const_data_ptr<scalar_t>() + base;
            scalar_t* dk = grad_x[k].mutable_data_ptr<scalar_t>() + base;
            double t = 0;
            for (int64_t i = 0; i < s.inner; ++i) {
              const acc_t gi = static_cast<acc_t>(g[base + i]);
              dk[i] = static_cast<scalar_t>(ak * gi);
              t += static_cast<double>(gi) * static_cast<double>(xk[i]);
            }
            Tp[k * C + c] += t;
          }
        }
      }
    });
  });
  auto [grad_w, grad_mean, grad_rstd] = mixed_sum_parameter_grads(S, T, w, mean, rstd);
  return {grad_x, grad_w, grad_mean, grad_rstd};
}

}  // namespace

TORCH_LIBRARY(stacnas, m) {
  m.def("mixed_sum(Tensor[] x, Tensor w, Tensor? mean, Tensor? rstd) -> Tensor");
  m.def("mixed_sum_backward(Tensor grad, Tensor[] x, Tensor w, Tensor? mean, Tensor? rstd) "
        "-> (Tensor[], Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(stacnas, CPU, m) {
  m.impl("mixed_sum", &mixed_sum_cpu);
  m.impl("mixed_sum_backward", &mixed_sum_backward_cpu);
}

}  // namespace stacnas
