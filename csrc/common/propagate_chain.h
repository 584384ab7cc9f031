// The Horner chain of fused propagation, shared by the CPU and CUDA kernels of mmrec_fast::propagate.
//
//   out = sum_k w_k M^k x,  M = diag(left) W diag(right),  evaluated as  h_L = w_L x,  h_k = w_k x + M h_{k+1},
//   out = h_0, with u = right * h stored between steps. Each step is
//     dst_i = row_scale_i * sum_e (W_ie * src_scale_{col_e}) src_{col_e} + x_coef * x_scale_i * x_i
//   (first step: src = x, src_scale = w_L right; intermediate: row_scale = left*right, x_scale = right;
//   last: row_scale = left, no x_scale, dst = out). Two (n, d) buffers whatever L is: out and one ping-pong.
// A backend supplies the step; this header owns argument checks, buffers and the per-step arguments.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace mmrec_fast {

struct PropagateStepTensors {
  at::Tensor src;        // (n, d), gathered by rows
  at::Tensor src_scale;  // (n,) or undefined (ones)
  at::Tensor row_scale;  // (m,) or undefined (ones)
  at::Tensor x;          // (m, d) or undefined (no x term)
  at::Tensor x_scale;    // (m,) or undefined (ones)
  double x_coef;
  at::Tensor dst;  // (m, d)
};

inline at::ScalarType accumulate_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_propagate_vector(const std::optional<at::Tensor>& t, const char* name, int64_t size,
                                   const at::Tensor& x) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->dim() == 1 && t->size(0) == size, "propagate: ", name, " must have shape (", size, ",), got ",
              t->sizes());
  TORCH_CHECK(t->scalar_type() == accumulate_type(x.scalar_type()), "propagate: ", name, " must have dtype ",
              accumulate_type(x.scalar_type()), " (the accumulation dtype of x), got ", t->scalar_type());
  TORCH_CHECK(t->is_contiguous() && t->device() == x.device(), "propagate: ", name,
              " must be contiguous and on x's device");
}

// Runs the chain; `step(const PropagateStepTensors&)` computes one step on the backend's device.
template <typename StepFn>
at::Tensor propagate_chain(const at::Tensor& x, const at::Tensor& rowptr, const at::Tensor& col,
                           const std::optional<at::Tensor>& values, const std::optional<at::Tensor>& left,
                           const std::optional<at::Tensor>& right, at::ArrayRef<double> weights, StepFn&& step) {
  TORCH_CHECK(x.dim() == 2, "propagate: x must be 2-D (n, d), got ", x.sizes());
  TORCH_CHECK(rowptr.dim() == 1 && rowptr.size(0) >= 1 && rowptr.scalar_type() == at::kLong &&
                  rowptr.is_contiguous() && rowptr.device() == x.device(),
              "propagate: rowptr must be a contiguous 1-D int64 tensor on x's device");
  TORCH_CHECK(col.dim() == 1 && col.scalar_type() == at::kInt && col.is_contiguous() && col.device() == x.device(),
              "propagate: col must be a contiguous 1-D int32 tensor on x's device");
  TORCH_CHECK(!weights.empty(), "propagate: weights must hold num_layers + 1 >= 1 entries");
  const int64_t m = rowptr.size(0) - 1, n = x.size(0), d = x.size(1);
  const int64_t num_layers = static_cast<int64_t>(weights.size()) - 1;
  TORCH_CHECK(num_layers <= 1 || m == n, "propagate: ", num_layers, " layers need a square graph, got ", m, " x ", n);
  TORCH_CHECK(weights[0] == 0.0 || m == n, "propagate: a nonzero weight on layer 0 needs a square graph");
  check_propagate_vector(values, "values", col.size(0), x);
  check_propagate_vector(left, "left", m, x);
  check_propagate_vector(right, "right", n, x);

  const at::Tensor xc = x.contiguous();
  if (num_layers == 0) return xc * weights[0];
  at::Tensor out = at::empty({m, d}, x.options());
  if (m == 0 || d == 0) return out;

  const at::Tensor none;
  const at::Tensor left_t = left.value_or(none), right_t = right.value_or(none);
  // Row scale of the intermediate steps: left * right (either alone when the other is absent). Only chains of
  // two or more layers have intermediate steps, and only square graphs have those: one layer of an (m, n) graph
  // never forms it (left is (m,), right (n,)).
  const at::Tensor mid_scale = num_layers < 2                             ? none
                               : left_t.defined() && right_t.defined() ? left_t * right_t
                               : left_t.defined()                      ? left_t
                                                                       : right_t;
  // Per-source scale of the first step, which gathers x: w_L * right (nothing when that is all ones).
  const double w_last = weights[num_layers];
  const at::Tensor first_scale =
      right_t.defined() ? right_t * w_last
      : w_last != 1.0   ? at::full({n}, w_last, x.options().dtype(accumulate_type(x.scalar_type())))
                        : none;
  const at::Tensor buffers[2] = {out, num_layers >= 2 ? at::empty({n, d}, x.options()) : none};  // u_k: [k % 2]
  for (int64_t k = num_layers - 1; k >= 0; --k) {
    const bool first = k == num_layers - 1, last = k == 0;
    PropagateStepTensors t;
    t.src = first ? xc : buffers[(k + 1) % 2];
    t.src_scale = first ? first_scale : none;
    t.row_scale = last ? left_t : mid_scale;
    t.x = weights[k] != 0.0 ? xc : none;
    t.x_scale = last ? none : right_t;
    t.x_coef = weights[k];
    t.dst = buffers[k % 2];
    step(t);
  }
  return out;
}

}  // namespace mmrec_fast
