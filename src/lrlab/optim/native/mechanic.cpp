// Native multi-tensor kernels of Mechanic (lrlab/optim/mechanic.py): its own passes around the
// base optimizer's step, one call per pass for all CPU tensors of one dtype. The scalars are
// read by name from the structs generated out of the Python schemas (block below).
//
// Without store_delta, Delta = (x - x_ref) / (S + eps) is never written to memory: the pass
// before the base step and the pass after it both form it from x (kept in `prev`) and x_ref,
// and the final move forms Delta + (x+ - x) from the same three arrays. The for-loop path
// computes the same expressions in the same order, so the numbers are the same, and a step
// allocates one temporary copy of the parameters (prev) instead of two (prev and Delta).
#include "driver.h"

// BEGIN lrlab schema: generated from the Python schemas by lrlab.optim._executor (do not edit)
struct MechanicBeforeScalars {
  double divisor;
  static constexpr int kCount = 1;
};
struct MechanicBeforeSums {
  enum : int { delta_dot_grad, grad_sq, kCount };
};
struct MechanicAfterScalars {
  double divisor;
  static constexpr int kCount = 1;
};
struct MechanicAfterSums {
  enum : int { delta_dot_param, param_sq, kCount };
};
struct MechanicMoveScalars {
  double divisor;
  double scale;
  static constexpr int kCount = 2;
};
// END lrlab schema

namespace {

using lrlab::Call;

// Before the base step, Delta recomputed. Arrays: p, grad, ref, prev (written: x).
// Scalars: MechanicBeforeScalars (divisor: S + eps). Sums: <Delta, g>, <g, g>.
template <typename T>
void mechanic_before_recomputed(const Call& call) {
  using Sums = MechanicBeforeSums;
  // elementwise_sum2 fills the sums in its arguments' order
  static_assert(Sums::delta_dot_grad == 0 && Sums::grad_sq == 1, "sum order");
  const T divisor = T(lrlab::scalars<MechanicBeforeScalars>(call).divisor);
  lrlab::for_each_block<T, 4, Sums::kCount>(call, [&](int64_t, const lrlab::Arrays<T, 4>& a,
                                                      int64_t n, double* sums) {
    T* __restrict p = a[0];
    T* __restrict grad = a[1];
    T* __restrict ref = a[2];
    T* __restrict prev = a[3];
    lrlab::elementwise_sum2<T>(n, sums, [&](int64_t i, T& delta_dot_grad, T& grad_sq) {
      const T x = p[i];
      const T delta = (x - ref[i]) / divisor;
      prev[i] = x;
      delta_dot_grad += delta * grad[i];
      grad_sq += grad[i] * grad[i];
    });
  });
}

// Before the base step, Delta stored. Arrays: p, grad, delta, prev (written: x).
// Sums: <Delta, g>, <g, g>.
template <typename T>
void mechanic_before_stored(const Call& call) {
  using Sums = MechanicBeforeSums;
  static_assert(Sums::delta_dot_grad == 0 && Sums::grad_sq == 1, "sum order");
  lrlab::for_each_block<T, 4, Sums::kCount>(call, [&](int64_t, const lrlab::Arrays<T, 4>& a,
                                                      int64_t n, double* sums) {
    T* __restrict p = a[0];
    T* __restrict grad = a[1];
    T* __restrict delta = a[2];
    T* __restrict prev = a[3];
    lrlab::elementwise_sum2<T>(n, sums, [&](int64_t i, T& delta_dot_grad, T& grad_sq) {
      prev[i] = p[i];
      delta_dot_grad += delta[i] * grad[i];
      grad_sq += grad[i] * grad[i];
    });
  });
}

// After the base step, Delta recomputed (nothing written). Arrays: p (x+), prev (x), ref.
// Scalars: MechanicAfterScalars (divisor: S + eps). Sums: <Delta, x+>, <x+, x+>.
template <typename T>
void mechanic_after_recomputed(const Call& call) {
  using Sums = MechanicAfterSums;
  static_assert(Sums::delta_dot_param == 0 && Sums::param_sq == 1, "sum order");
  const T divisor = T(lrlab::scalars<MechanicAfterScalars>(call).divisor);
  lrlab::for_each_block<T, 3, Sums::kCount>(call, [&](int64_t, const lrlab::Arrays<T, 3>& a,
                                                      int64_t n, double* sums) {
    T* __restrict p = a[0];
    T* __restrict prev = a[1];
    T* __restrict ref = a[2];
    lrlab::elementwise_sum2<T>(n, sums, [&](int64_t i, T& delta_dot_param, T& param_sq) {
      const T delta = (prev[i] - ref[i]) / divisor;
      delta_dot_param += delta * p[i];
      param_sq += p[i] * p[i];
    });
  });
}

// After the base step, Delta stored: the sums, then Delta += x+ - x. Arrays: p (x+), prev
// (x), delta. Sums: <Delta, x+>, <x+, x+>.
template <typename T>
void mechanic_after_stored(const Call& call) {
  using Sums = MechanicAfterSums;
  static_assert(Sums::delta_dot_param == 0 && Sums::param_sq == 1, "sum order");
  lrlab::for_each_block<T, 3, Sums::kCount>(call, [&](int64_t, const lrlab::Arrays<T, 3>& a,
                                                      int64_t n, double* sums) {
    T* __restrict p = a[0];
    T* __restrict prev = a[1];
    T* __restrict delta = a[2];
    lrlab::elementwise_sum2<T>(n, sums, [&](int64_t i, T& delta_dot_param, T& param_sq) {
      const T d = delta[i];
      delta_dot_param += d * p[i];
      param_sq += p[i] * p[i];
      delta[i] = d + (p[i] - prev[i]);
    });
  });
}

// The final move x = x_ref + scale (Delta + x+ - x), Delta recomputed. Arrays: p (x+), prev
// (x), ref. Scalars: MechanicMoveScalars (divisor: S + eps; scale).
template <typename T>
void mechanic_move_recomputed(const Call& call) {
  const auto c = lrlab::scalars<MechanicMoveScalars>(call);
  const T divisor = T(c.divisor), scale = T(c.scale);
  lrlab::for_each_block<T, 3, 0>(call, [&](int64_t, const lrlab::Arrays<T, 3>& a, int64_t n,
                                           double*) {
    T* __restrict p = a[0];
    T* __restrict prev = a[1];
    T* __restrict ref = a[2];
    lrlab::elementwise<T>(n, [&](int64_t i) {
      const T delta = (prev[i] - ref[i]) / divisor + (p[i] - prev[i]);
      p[i] = delta * scale + ref[i];
    });
  });
}

// The final move x = x_ref + scale Delta, Delta stored. Arrays: p, ref, delta. Scalars:
// MechanicMoveScalars (scale; divisor unused).
template <typename T>
void mechanic_move_stored(const Call& call) {
  const T scale = T(lrlab::scalars<MechanicMoveScalars>(call).scale);
  lrlab::for_each_block<T, 3, 0>(call, [&](int64_t, const lrlab::Arrays<T, 3>& a, int64_t n,
                                           double*) {
    T* __restrict p = a[0];
    T* __restrict ref = a[1];
    T* __restrict delta = a[2];
    lrlab::elementwise<T>(n, [&](int64_t i) { p[i] = delta[i] * scale + ref[i]; });
  });
}

}  // namespace

LRLAB_EXPORT(mechanic_before_recomputed)
LRLAB_EXPORT(mechanic_before_stored)
LRLAB_EXPORT(mechanic_after_recomputed)
LRLAB_EXPORT(mechanic_after_stored)
LRLAB_EXPORT(mechanic_move_recomputed)
LRLAB_EXPORT(mechanic_move_stored)
