// conv_chain_backward: the backward pass of the lean supernet's ConvChain (stacnas/nn/routes.py) in one call: the
// convolutions of one DARTS conv op (ReLU, convs, BN+ReLU inside sep_conv) from the conv inputs kept in forward,
// the activations recomputed. Written in C++ because the chain's Python costs as much as its arithmetic at search
// sizes (≈10 % of a RobustDARTS S2–S4 step on 2 CPU cores): it orchestrates ATen ops and two stacnas kernels,
// called through the dispatcher, so the one function serves CPU and CUDA tensors.
//
// Step i computes out_i = conv_i(a_i) (+ bias_i), a_i = ReLU(z_i), ReLU((z_i - mean_i) / sqrt(var_i + eps_i)) or
// z_i, where z_i = inputs[i] (z_0 the chain's input, z_{i+1} = out_i); grad is that of the last out. On CPUs the
// depthwise and pointwise convs take faster routes than PyTorch's backward (equal to rounding):
//   - depthwise, dilated or not 3×3 (PyTorch's backward is fast for the others): the input gradient at stride 1
//     as a forward conv of grad with the flipped filters, the filter gradient by stacnas' kernel;
//   - pointwise (1×1, stride 1, ungrouped, unpadded): both gradients as batched matrix products.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <array>
#include <tuple>
#include <vector>

namespace stacnas {
namespace {

constexpr int64_t kGeometry = 7;  // per step: stride (2), padding (2), dilation (2), groups

struct Geometry {
  std::array<int64_t, 2> stride, padding, dilation;
  int64_t groups;
};

Geometry geometry_of(at::IntArrayRef geometry, int64_t i) {
  const int64_t* g = geometry.data() + kGeometry * i;
  return {{g[0], g[1]}, {g[2], g[3]}, {g[4], g[5]}, g[6]};
}

at::Tensor batch_norm_relu_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mean,
                                    const at::Tensor& var, bool training, double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("stacnas::batch_norm_relu_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         bool, double)>();
  return op.call(grad, x, mean, var, training, eps);
}

at::Tensor depthwise_conv2d_weight_grad(const at::Tensor& grad, const at::Tensor& x, at::IntArrayRef kernel_size,
                                        const Geometry& g) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("stacnas::depthwise_conv2d_weight_grad", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                         at::IntArrayRef, at::IntArrayRef)>();
  return op.call(grad, x, kernel_size, g.stride, g.padding, g.dilation);
}

// PyTorch's gradients of conv2d(x, w) where mask says.
std::pair<at::Tensor, at::Tensor> pytorchs(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w,
                                           const Geometry& g, bool input, bool weight) {
  auto found = at::convolution_backward(grad, x, w, c10::nullopt, g.stride, g.padding, g.dilation, false, {0, 0},
                                        g.groups, {input, weight, false});
  return {std::get<0>(found), std::get<1>(found)};
}

std::pair<at::Tensor, at::Tensor> depthwise_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w,
                                                     const Geometry& g, bool input, bool weight) {
  const int64_t kh = w.size(2), kw = w.size(3);
  if (kh == 3 && kw == 3 && g.dilation[0] == 1 && g.dilation[1] == 1) return pytorchs(grad, x, w, g, input, weight);
  at::Tensor grad_x, grad_w;
  if (input && g.stride[0] == 1 && g.stride[1] == 1) {
    const std::array<int64_t, 2> flipped = {g.dilation[0] * (kh - 1) - g.padding[0],
                                            g.dilation[1] * (kw - 1) - g.padding[1]};
    if (flipped[0] >= 0 && flipped[1] >= 0)
      grad_x = at::conv2d(grad, w.flip({-2, -1}), {}, 1, flipped, g.dilation, g.groups);
  }
  if (weight) grad_w = depthwise_conv2d_weight_grad(grad, x, {kh, kw}, g);
  if (input && !grad_x.defined()) grad_x = pytorchs(grad, x, w, g, true, false).first;
  return {grad_x, grad_w};
}

std::pair<at::Tensor, at::Tensor> pointwise_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w,
                                                     bool input, bool weight) {
  const int64_t n = x.size(0), c_out = w.size(0);
  const auto g = grad.reshape({n, c_out, -1});
  at::Tensor grad_x, grad_w;
  // bmm with the weight expanded (a view): matmul would copy to fold the batch into one product
  if (input) grad_x = at::bmm(w.reshape({1, c_out, -1}).mT().expand({n, -1, -1}), g).view(x.sizes());
  if (weight) grad_w = at::bmm(g, x.reshape({n, x.size(1), -1}).transpose(1, 2)).sum(0).view(w.sizes());
  return {grad_x, grad_w};
}

std::pair<at::Tensor, at::Tensor> conv_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w,
                                                const Geometry& g, bool input, bool weight) {
  if (x.device().is_cpu()) {
    const int64_t c = x.size(1);
    if (g.groups == c && w.size(0) == c && w.size(1) == 1) return depthwise_backward(grad, x, w, g, input, weight);
    if (w.size(2) == 1 && w.size(3) == 1 && g.groups == 1 && g.stride == std::array<int64_t, 2>{1, 1} &&
        g.padding == std::array<int64_t, 2>{0, 0})
      return pointwise_backward(grad, x, w, input, weight);
  }
  return pytorchs(grad, x, w, g, input, weight);
}

int64_t window_output(int64_t size, int64_t kernel, int64_t stride, int64_t padding, int64_t dilation) {
  const int64_t span = size + 2 * padding - dilation * (kernel - 1) - 1;
  return span >= 0 ? span / stride + 1 : 0;
}

// out is what conv2d(z, w) with geometry g gives (the Python dispatcher checks the same: stacnas/fused/checks.py).
void check_step(int64_t i, const at::Tensor& z, const at::Tensor& w, const at::Tensor& out, const Geometry& g) {
  constexpr const char* op = "conv_chain_backward";
  for (const at::Tensor* t : {&z, &w}) {
    TORCH_CHECK(t->scalar_type() == out.scalar_type() && t->device() == out.device(), op,
                ": every input and weight must have grad's dtype and device (", out.scalar_type(), " on ",
                out.device(), "), got ", t->scalar_type(), " on ", t->device());
  }
  TORCH_CHECK(z.dim() == 4 && w.dim() == 4 && out.dim() == 4, op, ": step ", i, ": expects 4-D tensors, got ",
              z.sizes(), ", ", w.sizes(), ", ", out.sizes());
  TORCH_CHECK(g.groups > 0 && z.size(1) == w.size(1) * g.groups && w.size(0) % g.groups == 0, op, ": step ", i,
              ": weight ", w.sizes(), " with groups=", g.groups, " does not fit input ", z.sizes());
  for (int d = 0; d < 2; ++d)
    TORCH_CHECK(g.stride[d] > 0 && g.dilation[d] > 0 && g.padding[d] >= 0, op, ": step ", i,
                ": needs stride and dilation above 0 and padding at least 0");
  const std::vector<int64_t> expected = {z.size(0), w.size(0),
                                         window_output(z.size(2), w.size(2), g.stride[0], g.padding[0], g.dilation[0]),
                                         window_output(z.size(3), w.size(3), g.stride[1], g.padding[1], g.dilation[1])};
  TORCH_CHECK(out.sizes() == at::IntArrayRef(expected), op, ": step ", i, ": its output ", out.sizes(),
              " is not what the conv gives on ", z.sizes(), " (", at::IntArrayRef(expected), ")");
}

// A step's BN statistics: both or neither, one value per input channel.
void check_statistics(int64_t i, const at::Tensor& z, const std::optional<at::Tensor>& mean,
                      const std::optional<at::Tensor>& var) {
  const bool normalized = mean.has_value() && mean->defined();
  TORCH_CHECK(normalized == (var.has_value() && var->defined()), "conv_chain_backward: step ", i,
              " needs both mean and var, or neither");
  if (!normalized) return;
  for (const at::Tensor* t : {&*mean, &*var})
    TORCH_CHECK(t->dim() == 1 && t->size(0) == z.size(1) && t->is_floating_point() && t->device() == z.device(),
                "conv_chain_backward: step ", i, ": mean and var must hold one value per input channel (", z.size(1),
                "), on its device");
}

}  // namespace

using MaybeTensors = std::vector<std::optional<at::Tensor>>;

// Gradients not asked for are None (grad_in's, a weight's, a bias's).
std::tuple<std::optional<at::Tensor>, MaybeTensors, MaybeTensors> conv_chain_backward(
    const at::Tensor& grad_in, at::TensorList inputs, at::TensorList weights, at::IntArrayRef geometry,
    const c10::List<bool>& relu, const c10::List<std::optional<at::Tensor>>& mean,
    const c10::List<std::optional<at::Tensor>>& var, const c10::List<bool>& training, at::ArrayRef<double> eps,
    bool input_grad, const c10::List<bool>& weight_grad, const c10::List<bool>& bias_grad) {
  const int64_t L = static_cast<int64_t>(inputs.size());
  TORCH_CHECK(L > 0, "conv_chain_backward: needs at least one step");
  for (const int64_t n : {static_cast<int64_t>(weights.size()), static_cast<int64_t>(relu.size()),
                          static_cast<int64_t>(mean.size()), static_cast<int64_t>(var.size()),
                          static_cast<int64_t>(training.size()), static_cast<int64_t>(eps.size()),
                          static_cast<int64_t>(weight_grad.size()), static_cast<int64_t>(bias_grad.size())})
    TORCH_CHECK(n == L, "conv_chain_backward: every per-step list needs one entry per input (", L, "), got ", n);
  TORCH_CHECK(static_cast<int64_t>(geometry.size()) == kGeometry * L, "conv_chain_backward: geometry needs ",
              kGeometry, " numbers per step (stride, padding, dilation, groups), got ", geometry.size(), " for ", L);
  TORCH_CHECK(grad_in.is_floating_point(), "conv_chain_backward: expects floating point tensors, got ",
              grad_in.scalar_type());
  for (int64_t i = 0; i < L; ++i) {
    check_step(i, inputs[i], weights[i], i + 1 < L ? inputs[i + 1] : grad_in, geometry_of(geometry, i));
    check_statistics(i, inputs[i], mean.get(i), var.get(i));
  }
  MaybeTensors grad_weights(L), grad_biases(L);
  at::Tensor grad = grad_in;
  for (int64_t i = L - 1; i >= 0; --i) {
    const at::Tensor& z = inputs[i];
    const auto step_mean = mean.get(i), step_var = var.get(i);
    const bool normalized = step_mean.has_value() && step_mean->defined();
    at::Tensor a = z;
    if (normalized)
      a = at::relu(at::batch_norm(z, {}, {}, *step_mean, *step_var, false, 0.0, eps[i], false));
    else if (relu.get(i))
      a = at::relu(z);
    const bool input = i > 0 || input_grad;
    auto [grad_a, grad_w] = conv_backward(grad, a, weights[i], geometry_of(geometry, i), input, weight_grad.get(i));
    if (grad_w.defined()) grad_weights[i] = grad_w;
    if (bias_grad.get(i)) grad_biases[i] = grad.sum({0, 2, 3});
    if (input && normalized)
      grad = batch_norm_relu_backward(grad_a, z, *step_mean, *step_var, training.get(i), eps[i]);
    else if (input)
      grad = relu.get(i) ? at::threshold_backward(grad_a, a, 0) : grad_a;
  }
  return {input_grad ? std::optional<at::Tensor>(grad) : std::nullopt, grad_weights, grad_biases};
}

TORCH_LIBRARY_FRAGMENT(stacnas, m) {
  m.def("conv_chain_backward(Tensor grad, Tensor[] inputs, Tensor[] weights, int[] geometry, bool[] relu, "
        "Tensor?[] mean, Tensor?[] var, bool[] training, float[] eps, bool input_grad, bool[] weight_grad, "
        "bool[] bias_grad) -> (Tensor?, Tensor?[], Tensor?[])");
}

TORCH_LIBRARY_IMPL(stacnas, CPU, m) { m.impl("conv_chain_backward", &conv_chain_backward); }

TORCH_LIBRARY_IMPL(stacnas, CUDA, m) { m.impl("conv_chain_backward", &conv_chain_backward); }

}  // namespace stacnas
