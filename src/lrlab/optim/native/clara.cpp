// Native multi-tensor kernels of CLARA (lrlab/optim/clara.py): the same arithmetic as the
// compiled kernels there, one call for all CPU tensors of one dtype. The step of a tensor
// divides by the norm of its own direction, which is known only after a pass over it, so a
// step is two passes: (1) the direction's squared norm (ClaraAdam also updates its moments
// there), (2) the parameter move and the path, with the path's new squared norm.
#include "driver.h"

namespace {

using lrlab::Call;
using lrlab::lerp;
using lrlab::with_flag;

// ClaraSGD pass (1). Arrays: grad, p. Constants: weight decay. Sums: ||grad + decay p||^2.
template <typename T>
void clara_sgd_norms(const Call& call) {
  const T decay = T(call.constants[0]);
  with_flag(call.constants[0] != 0.0, [&](auto has_decay) {
    lrlab::for_each_block<T, 2, 1>(call, [&](int64_t, const lrlab::Arrays<T, 2>& a, int64_t n,
                                             double* sums) {
      T* __restrict grad = a[0];
      T* __restrict p = a[1];
      lrlab::elementwise_sum1<T>(n, sums, [&](int64_t i, T& square) {
        // no decay: the gradient alone, as the reference path (the compiled kernel adds 0 p)
        const T s = has_decay.value ? grad[i] + decay * p[i] : grad[i];
        square += s * s;
      });
    });
  });
}

// ClaraSGD pass (2). Arrays: grad, p, path. Constants: weight decay, eta, c, 1 to move along
// the unit direction (unit_step) or 0. Per tensor: max(||s||, 1e-12). Sums: ||path_new||^2.
// u = s / ||s||, p = p - eta (u or s), path = lerp(path, u, c).
template <typename T>
void clara_sgd_move(const Call& call) {
  const double* constants = call.constants;
  const T decay = T(constants[0]), eta = T(constants[1]), c = T(constants[2]);
  with_flag(constants[0] != 0.0, [&](auto has_decay) {
    with_flag(constants[3] != 0.0, [&](auto unit_step) {
      with_flag(std::fabs(constants[2]) < 0.5, [&](auto small_weight) {
        lrlab::for_each_block<T, 3, 1>(call, [&](int64_t tensor, const lrlab::Arrays<T, 3>& a,
                                                 int64_t n, double* sums) {
          T* __restrict grad = a[0];
          T* __restrict p = a[1];
          T* __restrict path = a[2];
          const T norm = T(call.tensor_constants[tensor]);
          lrlab::elementwise_sum1<T>(n, sums, [&](int64_t i, T& square) {
            const T s = has_decay.value ? grad[i] + decay * p[i] : grad[i];
            const T unit = s / norm;
            const T new_path = lerp<small_weight.value>(path[i], unit, c);
            p[i] = p[i] - eta * (unit_step.value ? unit : s);
            path[i] = new_path;
            square += new_path * new_path;
          });
        });
      });
    });
  });
}

// ClaraAdam pass (1). Arrays: grad, p, m, v. Constants: weight decay, 1 - beta1, beta2,
// 1 - beta2, eps. Per tensor: 1 - beta1^t, 1 - beta2^t. Sums: ||s||^2 of the Adam direction
// s = (m / bias1) / (sqrt(v / bias2) + eps) after the moments' update.
template <typename T>
void clara_adam_moments(const Call& call) {
  const double* constants = call.constants;
  const T decay = T(constants[0]), one_minus_beta1 = T(constants[1]), beta2 = T(constants[2]),
          one_minus_beta2 = T(constants[3]), eps = T(constants[4]);
  with_flag(constants[0] != 0.0, [&](auto has_decay) {
    with_flag(std::fabs(constants[1]) < 0.5, [&](auto small_weight) {
      lrlab::for_each_block<T, 4, 1>(call, [&](int64_t tensor, const lrlab::Arrays<T, 4>& a,
                                               int64_t n, double* sums) {
        T* __restrict grad = a[0];
        T* __restrict p = a[1];
        T* __restrict m = a[2];
        T* __restrict v = a[3];
        const T bias1 = T(call.tensor_constants[2 * tensor]),
                bias2 = T(call.tensor_constants[2 * tensor + 1]);
        lrlab::elementwise_sum1<T>(n, sums, [&](int64_t i, T& square) {
          const T g = has_decay.value ? grad[i] + decay * p[i] : grad[i];
          const T m_new = lerp<small_weight.value>(m[i], g, one_minus_beta1);
          const T v_new = v[i] * beta2 + one_minus_beta2 * g * g;
          m[i] = m_new;
          v[i] = v_new;
          const T s = (m_new / bias1) / (std::sqrt(v_new / bias2) + eps);
          square += s * s;
        });
      });
    });
  });
}

// ClaraAdam pass (2). Arrays: p, m, v, path. Constants: eps, eta, c, unit_step as 1 or 0. Per
// tensor: 1 - beta1^t, 1 - beta2^t, max(||s||, 1e-12). Sums: ||path_new||^2. The direction s
// is recomputed from the moments of pass (1) (the same value), then moves p and the path as
// ClaraSGD's pass (2).
template <typename T>
void clara_adam_move(const Call& call) {
  const double* constants = call.constants;
  const T eps = T(constants[0]), eta = T(constants[1]), c = T(constants[2]);
  with_flag(constants[3] != 0.0, [&](auto unit_step) {
    with_flag(std::fabs(constants[2]) < 0.5, [&](auto small_weight) {
      lrlab::for_each_block<T, 4, 1>(call, [&](int64_t tensor, const lrlab::Arrays<T, 4>& a,
                                               int64_t n, double* sums) {
        T* __restrict p = a[0];
        T* __restrict m = a[1];
        T* __restrict v = a[2];
        T* __restrict path = a[3];
        const T bias1 = T(call.tensor_constants[3 * tensor]),
                bias2 = T(call.tensor_constants[3 * tensor + 1]),
                norm = T(call.tensor_constants[3 * tensor + 2]);
        lrlab::elementwise_sum1<T>(n, sums, [&](int64_t i, T& square) {
          const T s = (m[i] / bias1) / (std::sqrt(v[i] / bias2) + eps);
          const T unit = s / norm;
          const T new_path = lerp<small_weight.value>(path[i], unit, c);
          p[i] = p[i] - eta * (unit_step.value ? unit : s);
          path[i] = new_path;
          square += new_path * new_path;
        });
      });
    });
  });
}

}  // namespace

LRLAB_EXPORT(clara_sgd_norms)
LRLAB_EXPORT(clara_sgd_move)
LRLAB_EXPORT(clara_adam_moments)
LRLAB_EXPORT(clara_adam_move)
