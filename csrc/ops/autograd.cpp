// Autograd for the clipbert:: ops, in C++ so that a training step pays no Python on this path: the
// Python custom-op autograd cost about 58 us per forward+backward on CPU at [128, 16, 2], more than the
// kernels themselves. One Autograd registration serves every device; the forward and backward ops then
// dispatch to the CPU or CUDA kernels. The Triton ops keep their autograd in clipbert/ops/_registry.py.
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

namespace clipbert {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Handles to the ops below autograd (looked up once; the schemas are in lse_aggregate.cpp and
// temporal_mean.cpp).
const auto& lse_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("clipbert::lse_aggregate", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&)>();
  return op;
}

const auto& lse_backward_op() {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("clipbert::_lse_aggregate_backward", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op;
}

const auto& nll_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("clipbert::lse_aggregate_nll", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t)>();
  return op;
}

const auto& nll_backward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("clipbert::_lse_aggregate_nll_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, int64_t)>();
  return op;
}

const auto& temporal_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("clipbert::temporal_mean", "")
                       .typed<at::Tensor(const at::Tensor&)>();
  return op;
}

const auto& temporal_backward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("clipbert::_temporal_mean_backward", "")
                       .typed<at::Tensor(const at::Tensor&, int64_t)>();
  return op;
}

// The backward kernels have no derivative of their own. Under create_graph (GradMode is on while autograd
// runs a backward then) their outputs would come out detached and a second derivative silently 0, so that
// is an error that names the way out.
void check_first_order(const char* op) {
  TORCH_CHECK(!at::GradMode::is_enabled(), op,
              ": double backward (create_graph=True) is not supported by the fused kernels; use "
              "backend='reference' (or clipbert.ops.set_backend('reference')) for higher-order gradients");
}

// out [B, K] = log of Eq. 5; lse_all [B] is saved for backward and is not differentiable.
struct LseAggregate : public torch::autograd::Function<LseAggregate> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, lse_all] = lse_op().call(logits);
    ctx->save_for_backward({logits, out, lse_all});
    ctx->mark_non_differentiable({lse_all});
    return {out, lse_all};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    if (!grads[0].defined()) return {at::Tensor()};
    check_first_order("clipbert::lse_aggregate");
    return {lse_backward_op().call(grads[0], saved[0], saved[1], saved[2])};
  }
};

// Eq. 6 fused with Eq. 5: loss ([B] or []) and stats [B, 2] (saved, not differentiable).
struct LseAggregateNll : public torch::autograd::Function<LseAggregateNll> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& target,
                               int64_t reduction) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, stats] = nll_op().call(logits, target, reduction);
    ctx->save_for_backward({logits, target, stats});
    ctx->saved_data["reduction"] = reduction;
    ctx->mark_non_differentiable({stats});
    return {loss, stats};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    check_first_order("clipbert::lse_aggregate_nll");
    auto reduction = ctx->saved_data["reduction"].toInt();
    return {nll_backward_op().call(grads[0], saved[0], saved[1], saved[2], reduction), at::Tensor(),
            at::Tensor()};
  }
};

// [B, T, ...] -> [B, ...]; backward is grad / T broadcast over T, so only T is kept.
struct TemporalMean : public torch::autograd::Function<TemporalMean> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["frames"] = x.size(1);
    return temporal_op().call(x);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return {at::Tensor()};
    const int64_t frames = ctx->saved_data["frames"].toInt();
    if (at::GradMode::is_enabled()) {  // create_graph: the same values from differentiable ATen ops
      auto sizes = grads[0].sizes().vec();
      sizes.insert(sizes.begin() + 1, frames);
      return {grads[0].div(static_cast<double>(frames)).unsqueeze(1).expand(sizes)};
    }
    return {temporal_backward_op().call(grads[0], frames)};
  }
};

std::tuple<at::Tensor, at::Tensor> lse_aggregate_autograd(const at::Tensor& logits) {
  auto out = LseAggregate::apply(logits);
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor> lse_aggregate_nll_autograd(const at::Tensor& logits,
                                                              const at::Tensor& target, int64_t reduction) {
  auto out = LseAggregateNll::apply(logits, target, reduction);
  return {out[0], out[1]};
}

at::Tensor temporal_mean_autograd(const at::Tensor& x) { return TemporalMean::apply(x); }

}  // namespace

TORCH_LIBRARY_IMPL(clipbert, Autograd, m) {
  m.impl("lse_aggregate", lse_aggregate_autograd);
  m.impl("lse_aggregate_nll", lse_aggregate_nll_autograd);
  m.impl("temporal_mean", temporal_mean_autograd);
  // Its outputs are values, not functions of the logits to differentiate: autograd passes straight
  // through to the kernel, which is what keeps one call at one kernel launch.
  m.impl("lse_aggregate_nll_value_and_grad", torch::CppFunction::makeFallthrough());
}

}  // namespace clipbert
