// Native multi-tensor kernels of CLARA-auto (lrlab/optim/clara_auto.py): the same arithmetic as
// its reference loop, one call for all CPU tensors of one dtype. The path takes the unit
// preconditioned gradient q / ||q||, and ||q|| of a tensor is known only after a sweep over it,
// so a step is two passes: (1) the Adam moments, the move of x and of the displacement x - x0,
// with ||q||^2, ||g||^2 and ||x - x0||^2; (2) the path, with its new squared norm.
#include "driver.h"

// BEGIN lrlab schema: generated from the Python schemas by lrlab.optim._executor (do not edit)
struct ClaraAutoMoveScalars {
  double one_minus_beta1;
  double beta2;
  double one_minus_beta2;
  double eps;
  double c;
  static constexpr int kCount = 5;
};
struct ClaraAutoMoveTensorScalars {
  double bias_correction2;
  double step_size;
  static constexpr int kCount = 2;
};
struct ClaraAutoMoveSums {
  enum : int { preconditioned, grad, distance, kCount };
};
struct ClaraAutoPathScalars {
  double eps;
  double c;
  static constexpr int kCount = 2;
};
struct ClaraAutoPathTensorScalars {
  double bias_correction2;
  double norm;
  static constexpr int kCount = 2;
};
struct ClaraAutoPathSums {
  enum : int { path, kCount };
};
// END lrlab schema

namespace {

using lrlab::Call;
using lrlab::lerp;
using lrlab::with_flag;

// Pass (1). Arrays: grad, p, m, v, displacement. Scalars, tensor scalars and sums: the
// ClaraAutoMove structs above (c is the compiled kernel's, which folds pass (2) into this one).
//   m = lerp(m, g, 1 - beta1), v = beta2 v + (1 - beta2) g^2, h = sqrt(v / bias2) + eps,
//   x += step_size m / h, x - x0 += step_size m / h, q = g / h
// with step_size = -eta / (1 - beta1^t) (the reference's alpha, in Python double).
template <typename T>
void clara_auto_move(const Call& call) {
  const auto c = lrlab::scalars<ClaraAutoMoveScalars>(call);
  const T weight1 = T(c.one_minus_beta1), beta2 = T(c.beta2), weight2 = T(c.one_minus_beta2),
          eps = T(c.eps);
  using Sums = ClaraAutoMoveSums;
  with_flag(std::fabs(c.one_minus_beta1) < 0.5, [&](auto small_weight) {
    lrlab::for_each_block<T, 5, Sums::kCount>(
        call, [&](int64_t tensor, const lrlab::Arrays<T, 5>& a, int64_t n,
                  double* sums) LRLAB_FLATTEN {
          T* __restrict grad = a[0];
          T* __restrict p = a[1];
          T* __restrict m = a[2];
          T* __restrict v = a[3];
          T* __restrict displacement = a[4];
          const auto own = lrlab::tensor_scalars<ClaraAutoMoveTensorScalars>(call, tensor);
          const T bias2 = T(own.bias_correction2), step = T(own.step_size);
          static_assert(Sums::preconditioned == 0 && Sums::grad == 1 && Sums::distance == 2,
                        "the sums in the order elementwise_sum3 adds them");
          lrlab::elementwise_sum3<T>(n, sums, [=](int64_t i, T& q_sq, T& g_sq, T& d_sq) {
            const T g = grad[i];
            const T m_new = lerp<decltype(small_weight)::value>(m[i], g, weight1);
            const T v_new = v[i] * beta2 + weight2 * g * g;
            m[i] = m_new;
            v[i] = v_new;
            const T h = std::sqrt(v_new / bias2) + eps;
            const T move = m_new / h;
            p[i] = p[i] + step * move;
            const T d = displacement[i] + step * move;
            displacement[i] = d;
            const T q = g / h;
            q_sq += q * q;
            g_sq += g * g;
            d_sq += d * d;
          });
        });
  });
}

// Pass (2). Arrays: grad, v (as pass (1) left it), path. Scalars and tensor scalars: the
// ClaraAutoPath structs above (norm: max(||q||, 1e-12) from pass (1)). q is recomputed from v
// (the same value), then path = lerp(path, q / norm, c); the sum is ||path||^2.
template <typename T>
void clara_auto_path(const Call& call) {
  const auto c = lrlab::scalars<ClaraAutoPathScalars>(call);
  const T eps = T(c.eps), weight = T(c.c);
  with_flag(std::fabs(c.c) < 0.5, [&](auto small_weight) {
    lrlab::for_each_block<T, 3, ClaraAutoPathSums::kCount>(
        call, [&](int64_t tensor, const lrlab::Arrays<T, 3>& a, int64_t n,
                  double* sums) LRLAB_FLATTEN {
          T* __restrict grad = a[0];
          T* __restrict v = a[1];
          T* __restrict path = a[2];
          const auto own = lrlab::tensor_scalars<ClaraAutoPathTensorScalars>(call, tensor);
          const T bias2 = T(own.bias_correction2), norm = T(own.norm);
          lrlab::elementwise_sum1<T>(n, sums, [=](int64_t i, T& square) {
            const T q = grad[i] / (std::sqrt(v[i] / bias2) + eps);
            const T new_path = lerp<decltype(small_weight)::value>(path[i], q / norm, weight);
            path[i] = new_path;
            square += new_path * new_path;
          });
        });
  });
}

}  // namespace

LRLAB_EXPORT(clara_auto_move)
LRLAB_EXPORT(clara_auto_path)
