// stacnas._C: schemas of the fused ops and their CPU kernels.
//
// weighted_sum(outputs, weights)        y = sum_k weights[k] * outputs[k]
// weighted_sum_backward(g, outputs, w)  (dL/do_k = w_k * g for every k,  dL/dw_k = <g, o_k>)
//
// The dot products are summed in fixed-size blocks, then the block sums in order, so the result does not
// depend on the number of threads (deterministic CPU runs).
#include <Python.h>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <vector>

#include "weighted_sum.h"

extern "C" {
// Importing stacnas._C loads this library and so registers the ops below; it exposes no Python functions.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace stacnas {

void check_weighted_sum_args(const std::vector<at::Tensor>& outputs, const at::Tensor& weights) {
  TORCH_CHECK(!outputs.empty(), "weighted_sum: needs at least one output tensor");
  TORCH_CHECK(weights.dim() == 1 && weights.size(0) == static_cast<int64_t>(outputs.size()),
              "weighted_sum: weights must be 1-D with one entry per output, got shape ", weights.sizes(),
              " for ", outputs.size(), " outputs");
  for (const auto& o : outputs) {
    TORCH_CHECK(o.sizes() == outputs[0].sizes(), "weighted_sum: all outputs must have the same shape, got ",
                o.sizes(), " and ", outputs[0].sizes());
    TORCH_CHECK(o.scalar_type() == weights.scalar_type() && o.device() == weights.device(),
                "weighted_sum: outputs and weights must share dtype and device");
  }
}

namespace {

constexpr int64_t kBlock = 1 << 15;  // elements per partial sum of a dot product

at::Tensor weighted_sum_cpu(at::TensorList outputs_in, const at::Tensor& weights_in) {
  std::vector<at::Tensor> outputs;
  for (const auto& o : outputs_in) outputs.push_back(o.contiguous());
  check_weighted_sum_args(outputs, weights_in);
  const auto weights = weights_in.contiguous();
  auto y = at::empty_like(outputs[0], at::MemoryFormat::Contiguous);
  const int64_t n = y.numel();
  const int64_t K = static_cast<int64_t>(outputs.size());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "weighted_sum_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<const scalar_t*> src(K);
    std::vector<acc_t> w(K);
    for (int64_t k = 0; k < K; ++k) {
      src[k] = outputs[k].const_data_ptr<scalar_t>();
      w[k] = static_cast<acc_t>(weights[k].item<scalar_t>());
    }
    scalar_t* dst = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        acc_t acc = 0;
        for (int64_t k = 0; k < K; ++k) acc += w[k] * static_cast<acc_t>(src[k][i]);
        dst[i] = static_cast<scalar_t>(acc);
      }
    });
  });
  return y;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> weighted_sum_backward_cpu(const at::Tensor& grad_in,
                                                                          at::TensorList outputs_in,
                                                                          const at::Tensor& weights_in) {
  std::vector<at::Tensor> outputs;
  for (const auto& o : outputs_in) outputs.push_back(o.contiguous());
  check_weighted_sum_args(outputs, weights_in);
  const auto grad = grad_in.contiguous();
  const auto weights = weights_in.contiguous();
  TORCH_CHECK(grad.sizes() == outputs[0].sizes(), "weighted_sum_backward: grad shape ", grad.sizes(),
              " differs from the outputs' ", outputs[0].sizes());
  const int64_t n = grad.numel();
  const int64_t K = static_cast<int64_t>(outputs.size());
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<at::Tensor> grad_outputs;
  for (int64_t k = 0; k < K; ++k) grad_outputs.push_back(at::empty_like(grad, at::MemoryFormat::Contiguous));
  auto grad_weights = at::empty_like(weights);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "weighted_sum_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    std::vector<acc_t> partial(K * blocks, 0);
    for (int64_t k = 0; k < K; ++k) {
      const scalar_t* o = outputs[k].const_data_ptr<scalar_t>();
      scalar_t* go = grad_outputs[k].mutable_data_ptr<scalar_t>();
      const acc_t w = static_cast<acc_t>(weights[k].item<scalar_t>());
      at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          acc_t dot = 0;
          for (int64_t i = b * kBlock, end = std::min(n, (b + 1) * kBlock); i < end; ++i) {
            const acc_t gi = static_cast<acc_t>(g[i]);
            go[i] = static_cast<scalar_t>(w * gi);
            dot += gi * static_cast<acc_t>(o[i]);
          }
          partial[k * blocks + b] = dot;
        }
      });
    }
    scalar_t* gw = grad_weights.mutable_data_ptr<scalar_t>();
    for (int64_t k = 0; k < K; ++k) {
      acc_t sum = 0;
      for (int64_t b = 0; b < blocks; ++b) sum += partial[k * blocks + b];
      gw[k] = static_cast<scalar_t>(sum);
    }
  });
  return {grad_outputs, grad_weights};
}

}  // namespace

TORCH_LIBRARY(stacnas, m) {
  m.def("weighted_sum(Tensor[] outputs, Tensor weights) -> Tensor");
  m.def("weighted_sum_backward(Tensor grad, Tensor[] outputs, Tensor weights) -> (Tensor[], Tensor)");
}

TORCH_LIBRARY_IMPL(stacnas, CPU, m) {
  m.impl("weighted_sum", &weighted_sum_cpu);
  m.impl("weighted_sum_backward", &weighted_sum_backward_cpu);
}

}  // namespace stacnas
