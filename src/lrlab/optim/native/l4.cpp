// Native multi-tensor kernels of L4 (lrlab/optim/l4.py): the same arithmetic as the compiled
// kernels there, one call for all CPU tensors of one dtype.
#include "driver.h"

// BEGIN lrlab schema: generated from the Python schemas by lrlab.optim._executor (do not edit)
struct L4MomMomentsScalars {
  double weight;
  static constexpr int kCount = 1;
};
struct L4MomMomentsTensorScalars {
  double bias;
  static constexpr int kCount = 1;
};
struct L4MomMomentsSums {
  enum : int { dot, kCount };
};
struct L4MomMoveScalars {
  double eta;
  static constexpr int kCount = 1;
};
struct L4MomMoveTensorScalars {
  double bias;
  static constexpr int kCount = 1;
};
struct L4AdamMomentsScalars {
  double weight1;
  double beta2;
  double weight2;
  double adam_eps;
  static constexpr int kCount = 4;
};
struct L4AdamMomentsTensorScalars {
  double bias1;
  double bias2;
  static constexpr int kCount = 2;
};
struct L4AdamMomentsSums {
  enum : int { dot, kCount };
};
struct L4AdamMoveScalars {
  double eta;
  double adam_eps;
  static constexpr int kCount = 2;
};
struct L4AdamMoveTensorScalars {
  double bias1;
  double bias2;
  static constexpr int kCount = 2;
};
// END lrlab schema

namespace {

using lrlab::Call;
using lrlab::lerp;
using lrlab::with_flag;

// L4Mom's first pass. Arrays: grad, m. Scalars: L4MomMoments (weight: 1 - beta; per tensor,
// bias: 1 - beta^t). Sum: ||g_hat||^2 with g_hat = m_new / (1 - beta^t).
template <typename T>
void l4_mom_moments(const Call& call) {
  const T weight = T(lrlab::scalars<L4MomMomentsScalars>(call).weight);
  with_flag(std::fabs(weight) < T(0.5), [&](auto small_weight) {
    lrlab::for_each_block<T, 2, 1>(call, [&](int64_t tensor, const lrlab::Arrays<T, 2>& a,
                                             int64_t n, double* sums) LRLAB_FLATTEN {
      T* __restrict grad = a[0];
      T* __restrict m = a[1];
      const T bias = T(lrlab::tensor_scalars<L4MomMomentsTensorScalars>(call, tensor).bias);
      lrlab::elementwise_sum1<T>(n, sums, [&](int64_t i, T& square) {
        const T m_new = lerp<decltype(small_weight)::value>(m[i], grad[i], weight);
        m[i] = m_new;
        const T estimate = m_new / bias;
        square += estimate * estimate;
      });
    });
  });
}

// L4Mom's move, x -= eta g_hat with g_hat recomputed as the first pass formed it. Arrays: p, m.
// Scalars: L4MomMove.
template <typename T>
void l4_mom_move(const Call& call) {
  const T eta = T(lrlab::scalars<L4MomMoveScalars>(call).eta);
  lrlab::for_each_block<T, 2, 0>(call, [&](int64_t tensor, const lrlab::Arrays<T, 2>& a,
                                           int64_t n, double*) LRLAB_FLATTEN {
    T* __restrict p = a[0];
    T* __restrict m = a[1];
    const T bias = T(lrlab::tensor_scalars<L4MomMoveTensorScalars>(call, tensor).bias);
    lrlab::elementwise<T>(n, [&](int64_t i) { p[i] = p[i] - eta * (m[i] / bias); });
  });
}

// L4Adam's first pass. Arrays: grad, m, s. Scalars: L4AdamMoments (weight1: 1 - beta1,
// weight2: 1 - beta2; per tensor, bias1: 1 - beta1^t, bias2: 1 - beta2^t). Sum: <g_hat, v> with
// g_hat = m_new / (1 - beta1^t), v = g_hat / (sqrt(s_new / (1 - beta2^t)) + adam_eps).
template <typename T>
void l4_adam_moments(const Call& call) {
  const auto c = lrlab::scalars<L4AdamMomentsScalars>(call);
  const T weight = T(c.weight1), beta2 = T(c.beta2), one_minus_beta2 = T(c.weight2),
          adam_eps = T(c.adam_eps);
  with_flag(std::fabs(weight) < T(0.5), [&](auto small_weight) {
    lrlab::for_each_block<T, 3, 1>(call, [&](int64_t tensor, const lrlab::Arrays<T, 3>& a,
                                             int64_t n, double* sums) LRLAB_FLATTEN {
      T* __restrict grad = a[0];
      T* __restrict m = a[1];
      T* __restrict s = a[2];
      const auto biases = lrlab::tensor_scalars<L4AdamMomentsTensorScalars>(call, tensor);
      const T bias1 = T(biases.bias1), bias2 = T(biases.bias2);
      lrlab::elementwise_sum1<T>(n, sums, [&](int64_t i, T& dot) {
        const T g = grad[i];
        const T m_new = lerp<decltype(small_weight)::value>(m[i], g, weight);
        const T s_new = s[i] * beta2 + one_minus_beta2 * g * g;
        m[i] = m_new;
        s[i] = s_new;
        const T estimate = m_new / bias1;
        dot += estimate * (estimate / (std::sqrt(s_new / bias2) + adam_eps));
      });
    });
  });
}

// L4Adam's move, x -= eta v with v recomputed from the updated moments as the first pass formed
// it. Arrays: p, m, s. Scalars: L4AdamMove.
template <typename T>
void l4_adam_move(const Call& call) {
  const auto c = lrlab::scalars<L4AdamMoveScalars>(call);
  const T eta = T(c.eta), adam_eps = T(c.adam_eps);
  lrlab::for_each_block<T, 3, 0>(call, [&](int64_t tensor, const lrlab::Arrays<T, 3>& a,
                                           int64_t n, double*) LRLAB_FLATTEN {
    T* __restrict p = a[0];
    T* __restrict m = a[1];
    T* __restrict s = a[2];
    const auto biases = lrlab::tensor_scalars<L4AdamMoveTensorScalars>(call, tensor);
    const T bias1 = T(biases.bias1), bias2 = T(biases.bias2);
    lrlab::elementwise<T>(n, [&](int64_t i) {
      const T direction = (m[i] / bias1) / (std::sqrt(s[i] / bias2) + adam_eps);
      p[i] = p[i] - eta * direction;
    });
  });
}

}  // namespace

LRLAB_EXPORT(l4_mom_moments)
LRLAB_EXPORT(l4_mom_move)
LRLAB_EXPORT(l4_adam_moments)
LRLAB_EXPORT(l4_adam_move)
