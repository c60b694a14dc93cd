// Native multi-tensor kernels of Schedule-Free SGD and AdamW (lrlab/optim/schedule_free.py):
// the same arithmetic as the compiled kernels there, one call for all CPU tensors of one dtype.
// Every scalar of a step is known before it, so a step is one pass over memory; so is a switch
// between train and eval mode.
#include "driver.h"

// BEGIN lrlab schema: generated from the Python schemas by lrlab.optim._executor (do not edit)
struct ScheduleFreeInterpolateScalars {
  double weight;
  static constexpr int kCount = 1;
};
struct ScheduleFreeSgdStepScalars {
  double weight_decay;
  double lr;
  double c;
  double y_step;
  static constexpr int kCount = 4;
};
struct ScheduleFreeAdamwStepScalars {
  double beta2;
  double one_minus_beta2;
  double bias_correction2;
  double eps;
  double weight_decay;
  double lr;
  double c;
  double y_step;
  static constexpr int kCount = 8;
};
// END lrlab schema

namespace {

using lrlab::Call;
using lrlab::lerp;
using lrlab::with_flag;

// One SGDScheduleFree step. Arrays: grad, y, z. Scalars: ScheduleFreeSgdStepScalars.
// d = grad + decay y, y = lerp(y, z, c) + y_step d, z = z - lr d.
template <typename T>
void schedule_free_sgd_step(const Call& call) {
  const auto scalars = lrlab::scalars<ScheduleFreeSgdStepScalars>(call);
  const T decay = T(scalars.weight_decay), lr = T(scalars.lr), c = T(scalars.c),
          y_step = T(scalars.y_step);
  with_flag(scalars.weight_decay != 0.0, [&](auto has_decay) {
    with_flag(std::fabs(scalars.c) < 0.5, [&](auto small_weight) {
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

// One AdamWScheduleFree step. Arrays: grad, y, z, v. Scalars: ScheduleFreeAdamwStepScalars.
// v = beta2 v + (1 - beta2) g^2, d = g / (sqrt(v / bias2) + eps) + decay y, then y and z as in
// the SGD step.
template <typename T>
void schedule_free_adamw_step(const Call& call) {
  const auto scalars = lrlab::scalars<ScheduleFreeAdamwStepScalars>(call);
  const T beta2 = T(scalars.beta2), one_minus_beta2 = T(scalars.one_minus_beta2),
          bias2 = T(scalars.bias_correction2), eps = T(scalars.eps),
          decay = T(scalars.weight_decay), lr = T(scalars.lr), c = T(scalars.c),
          y_step = T(scalars.y_step);
  with_flag(scalars.weight_decay != 0.0, [&](auto has_decay) {
    with_flag(std::fabs(scalars.c) < 0.5, [&](auto small_weight) {
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
// to x (eval). Arrays: p, z. Scalars: ScheduleFreeInterpolateScalars.
template <typename T>
void schedule_free_interpolate(const Call& call) {
  const double value = lrlab::scalars<ScheduleFreeInterpolateScalars>(call).weight;
  const T weight = T(value);
  with_flag(std::fabs(value) < 0.5, [&](auto small_weight) {
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
