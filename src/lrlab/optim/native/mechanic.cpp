// Native multi-tensor kernels of Mechanic (lrlab/optim/mechanic.py): its own passes around the
// base optimizer's step, one call per pass for all CPU tensors of one dtype.
//
// Without store_delta, Delta = (x - x_ref) / (S + eps) is never written to memory: the pass
// before the base step and the pass after it both form it from x (kept in `prev`) and x_ref,
// and the final move forms Delta + (x+ - x) from the same three arrays. The for-loop path
// computes the same expressions in the same order, so the numbers are the same, and a step
// allocates one temporary copy of the parameters (prev) instead of two (prev and Delta).
#include "driver.h"

namespace {

using lrlab::Call;

// Before the base step, Delta recomputed. Arrays: p, grad, ref, prev (written: x).
// Constants: S + eps. Sums: <Delta, g>, <g, g>.
template <typename T>
void mechanic_before_recomputed(const Call& call) {
  const T divisor = T(call.constants[0]);
  lrlab::for_each_block<T, 4, 2>(call, [&](int64_t, const lrlab::Arrays<T, 4>& a, int64_t n,
                                           double* sums) {
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
  lrlab::for_each_block<T, 4, 2>(call, [&](int64_t, const lrlab::Arrays<T, 4>& a, int64_t n,
                                           double* sums) {
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
// Constants: S + eps. Sums: <Delta, x+>, <x+, x+>.
template <typename T>
void mechanic_after_recomputed(const Call& call) {
  const T divisor = T(call.constants[0]);
  lrlab::for_each_block<T, 3, 2>(call, [&](int64_t, const lrlab::Arrays<T, 3>& a, int64_t n,
                                           double* sums) {
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
  lrlab::for_each_block<T, 3, 2>(call, [&](int64_t, const lrlab::Arrays<T, 3>& a, int64_t n,
                                           double* sums) {
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
// (x), ref. Constants: S + eps, scale.
template <typename T>
void mechanic_move_recomputed(const Call& call) {
  const T divisor = T(call.constants[0]), scale = T(call.constants[1]);
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

// The final move x = x_ref + scale Delta, Delta stored. Arrays: p, ref, delta. Constants:
// scale.
template <typename T>
void mechanic_move_stored(const Call& call) {
  const T scale = T(call.constants[0]);
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
