// Native multi-tensor kernels of Schedule-Free SGD and AdamW (lrlab/optim/schedule_free.py):
// the same arithmetic as the compiled kernels there, one call for all CPU tensors of one dtype.
// Every scalar of a step is known before it, so a step is one pass over memory; so is a switch
// between train and eval mode.
#include "driver.h"

namespace {

using lrlab::Call;
using lrlab::lerp;
using lrlab::with_flag;

// One SGDScheduleFree step. Arrays: grad, y, z. Constants: weight decay, lr, c, y_step.
// d = grad + decay y, y = lerp(y, z, c) + y_step d, z = z - lr d.
template <typename T>
void schedule_free_sgd_step(const Call& call) {
  const double* constants = call.constants;
  const T decay = T(constants[0]), lr = T(constants[1]), c = T(constants[2]),
          y_step = T(constants[3]);
  with_flag(constants[0] != 0.0, [&](auto has_decay) {
    with_flag(std::fabs(constants[2]) < 0.5, [&](auto small_weight) {
      lrlab::for_each_block<T, 3, 0>(call, [&](int64_t, const lrlab::Arrays<T, 3>& a,
                                               int64_t n, double*) {
        T* __restrict grad = a[0];
        T* __restrict y = a[1];
        T* __restrict z = a[2];
        lrlab::elementwise<T>(n, [&](int64_t i) {
          const T y_old = y[i];
          const T z_old = z[i];
          // no decay: the gradient alone, as the reference path (the compiled kernel adds 0 y)
          const T d = has_decay.value ? grad[i] + decay * y_old : grad[i];
          y[i] = lerp<small_weight.value>(y_old, z_old, c) + y_step * d;
          z[i] = z_old - lr * d;
        });
      });
    });
  });
}

// One AdamWScheduleFree step. Arrays: grad, y, z, v. Constants: beta2, 1 - beta2,
// 1 - beta2^(k+1), eps, weight decay, lr, c, y_step. v = beta2 v + (1 - beta2) g^2,
// d = g / (sqrt(v / bias2) + eps) + decay y, then y and z as in the SGD step.
template <typename T>
void schedule_free_adamw_step(const Call& call) {
  const double* constants = call.constants;
  const T beta2 = T(constants[0]), one_minus_beta2 = T(constants[1]), bias2 = T(constants[2]),
          eps = T(constants[3]), decay = T(constants[4]), lr = T(constants[5]),
          c = T(constants[6]), y_step = T(constants[7]);
  with_flag(constants[4] != 0.0, [&](auto has_decay) {
    with_flag(std::fabs(constants[6]) < 0.5, [&](auto small_weight) {
      lrlab::for_each_block<T, 4, 0>(call, [&](int64_t, const lrlab::Arrays<T, 4>& a,
                                               int64_t n, double*) {
        T* __restrict grad = a[0];
        T* __restrict y = a[1];
        T* __restrict z = a[2];
        T* __restrict v = a[3];
        lrlab::elementwise<T>(n, [&](int64_t i) {
          const T g = grad[i];
          const T y_old = y[i];
          const T z_old = z[i];
          const T v_new = v[i] * beta2 + one_minus_beta2 * g * g;
          const T scaled = g / (std::sqrt(v_new / bias2) + eps);
          const T d = has_decay.value ? scaled + decay * y_old : scaled;
          v[i] = v_new;
          y[i] = lerp<small_weight.value>(y_old, z_old, c) + y_step * d;
          z[i] = z_old - lr * d;
        });
      });
    });
  });
}

// The switch between modes, p = lerp(p, z, weight): weight 1 - beta to y (train), 1 - 1 / beta
// to x (eval). Arrays: p, z. Constants: weight.
template <typename T>
void schedule_free_interpolate(const Call& call) {
  const T weight = T(call.constants[0]);
  with_flag(std::fabs(call.constants[0]) < 0.5, [&](auto small_weight) {
    lrlab::for_each_block<T, 2, 0>(call, [&](int64_t, const lrlab::Arrays<T, 2>& a, int64_t n,
                                             double*) {
      T* __restrict p = a[0];
      T* __restrict z = a[1];
      lrlab::elementwise<T>(n, [&](int64_t i) {
        p[i] = lerp<small_weight.value>(p[i], z[i], weight);
      });
    });
  });
}

}  // namespace

LRLAB_EXPORT(schedule_free_sgd_step)
LRLAB_EXPORT(schedule_free_adamw_step)
LRLAB_EXPORT(schedule_free_interpolate)
