// Native multi-tensor kernels of CLARA (lrlab/optim/clara.py): the same arithmetic as the
// compiled kernels there, one call for all CPU tensors of one dtype. The step of a tensor
// divides by the norm of its own direction, which is known only after a pass over it, so a
// step is two passes: (1) the direction's squared norm (ClaraAdam also updates its moments
// there), (2) the parameter move and the path, with the path's new squared norm.
#include "driver.h"

// BEGIN lrlab schema: generated from the Python schemas by lrlab.optim._executor (do not edit)
struct ClaraSgdNormsScalars {
  double weight_decay;
  double eta;
  double c;
  double unit_step;
  static constexpr int kCount = 4;
};
struct ClaraSgdNormsSums {
  enum : int { direction, kCount };
};
struct ClaraSgdMoveScalars {
  double weight_decay;
  double eta;
  double c;
  double unit_step;
  static constexpr int kCount = 4;
};
struct ClaraSgdMoveTensorScalars {
  double norm;
  static constexpr int kCount = 1;
};
struct ClaraSgdMoveSums {
  enum : int { path, kCount };
};
struct ClaraAdamMomentsScalars {
  double weight_decay;
  double one_minus_beta1;
  double beta2;
  double one_minus_beta2;
  double eps;
  double eta;
  double c;
  double unit_step;
  static constexpr int kCount = 8;
};
struct ClaraAdamMomentsTensorScalars {
  double bias1;
  double bias2;
  static constexpr int kCount = 2;
};
struct ClaraAdamMomentsSums {
  enum : int { direction, kCount };
};
struct ClaraAdamMoveScalars {
  double weight_decay;
  double one_minus_beta1;
  double beta2;
  double one_minus_beta2;
  double eps;
  double eta;
  double c;
  double unit_step;
  static constexpr int kCount = 8;
};
struct ClaraAdamMoveTensorScalars {
  double bias1;
  double bias2;
  double norm;
  static constexpr int kCount = 3;
};
struct ClaraAdamMoveSums {
  enum : int { path, kCount };
};
// END lrlab schema

namespace {

using lrlab::Call;
using lrlab::lerp;
using lrlab::with_flag;

// ClaraSGD pass (1). Arrays: grad, p. Scalars: ClaraSgdNorms above (only weight_decay is read
// here; the rest are the compiled kernel's, which does both passes). Sum: ||grad + decay p||^2.
template <typename T>
void clara_sgd_norms(const Call& call) {
  const auto c = lrlab::scalars<ClaraSgdNormsScalars>(call);
  const T decay = T(c.weight_decay);
  with_flag(c.weight_decay != 0.0, [&](auto has_decay) {
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

// ClaraSGD pass (2). Arrays: grad, p, path. Scalars and tensor scalars: ClaraSgdMove above
// (unit_step: 1 to move along the unit direction, else 0; norm: max(||s||, 1e-12)). Sum:
// ||path_new||^2. u = s / ||s||, p = p - eta (u or s), path = lerp(path, u, c).
template <typename T>
void clara_sgd_move(const Call& call) {
  const auto scalars = lrlab::scalars<ClaraSgdMoveScalars>(call);
  const T decay = T(scalars.weight_decay), eta = T(scalars.eta), c = T(scalars.c);
  with_flag(scalars.weight_decay != 0.0, [&](auto has_decay) {
    with_flag(scalars.unit_step != 0.0, [&](auto unit_step) {
      with_flag(std::fabs(scalars.c) < 0.5, [&](auto small_weight) {
        lrlab::for_each_block<T, 3, 1>(call, [&](int64_t tensor, const lrlab::Arrays<T, 3>& a,
                                                 int64_t n, double* sums) {
          T* __restrict grad = a[0];
          T* __restrict p = a[1];
          T* __restrict path = a[2];
          const T norm = T(lrlab::tensor_scalars<ClaraSgdMoveTensorScalars>(call, tensor).norm);
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

// ClaraAdam pass (1). Arrays: grad, p, m, v. Scalars and tensor scalars: ClaraAdamMoments above
// (eta, c and unit_step are the compiled kernel's, which does both passes; bias1, bias2:
// 1 - beta1^t, 1 - beta2^t). Sum: ||s||^2 of the Adam direction
// s = (m / bias1) / (sqrt(v / bias2) + eps) after the moments' update.
template <typename T>
void clara_adam_moments(const Call& call) {
  const auto c = lrlab::scalars<ClaraAdamMomentsScalars>(call);
  const T decay = T(c.weight_decay), one_minus_beta1 = T(c.one_minus_beta1), beta2 = T(c.beta2),
          one_minus_beta2 = T(c.one_minus_beta2), eps = T(c.eps);
  with_flag(c.weight_decay != 0.0, [&](auto has_decay) {
    with_flag(std::fabs(c.one_minus_beta1) < 0.5, [&](auto small_weight) {
      lrlab::for_each_block<T, 4, 1>(call, [&](int64_t tensor, const lrlab::Arrays<T, 4>& a,
                                               int64_t n, double* sums) {
        T* __restrict grad = a[0];
        T* __restrict p = a[1];
        T* __restrict m = a[2];
        T* __restrict v = a[3];
        const auto own = lrlab::tensor_scalars<ClaraAdamMomentsTensorScalars>(call, tensor);
        const T bias1 = T(own.bias1), bias2 = T(own.bias2);
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

// ClaraAdam pass (2). Arrays: p, m, v, path. Scalars and tensor scalars: ClaraAdamMove above
// (the moments' scalars are not read here; norm: max(||s||, 1e-12)). Sum: ||path_new||^2. The
// direction s is recomputed from the moments of pass (1) (the same value), then moves p and the
// path as ClaraSGD's pass (2).
template <typename T>
void clara_adam_move(const Call& call) {
  const auto scalars = lrlab::scalars<ClaraAdamMoveScalars>(call);
  const T eps = T(scalars.eps), eta = T(scalars.eta), c = T(scalars.c);
  with_flag(scalars.unit_step != 0.0, [&](auto unit_step) {
    with_flag(std::fabs(scalars.c) < 0.5, [&](auto small_weight) {
      lrlab::for_each_block<T, 4, 1>(call, [&](int64_t tensor, const lrlab::Arrays<T, 4>& a,
                                               int64_t n, double* sums) {
        T* __restrict p = a[0];
        T* __restrict m = a[1];
        T* __restrict v = a[2];
        T* __restrict path = a[3];
        const auto own = lrlab::tensor_scalars<ClaraAdamMoveTensorScalars>(call, tensor);
        const T bias1 = T(own.bias1), bias2 = T(own.bias2), norm = T(own.norm);
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
