// Native multi-tensor kernels of L4 (lrlab/optim/l4.py): the same arithmetic as the compiled
// kernels there, one call for all CPU tensors of one dtype.
#include "driver.h"

namespace {

using lrlab::Call;
using lrlab::lerp;
using lrlab::with_flag;

// L4Mom's first pass. Arrays: grad, m. Constants: 1 - beta. Per tensor: 1 - beta^t.
// Sum: ||g_hat||^2 with g_hat = m_new / (1 - beta^t).
template <typename T>
void l4_mom_moments(const Call& call) {
  const T weight = T(call.constants[0]);
  with_flag(std::fabs(weight) < T(0.5), [&](auto small_weight) {
    lrlab::for_each_block<T, 2, 1>(call, [&](int64_t tensor, const lrlab::Arrays<T, 2>& a,
                                             int64_t n, double* sums) LRLAB_FLATTEN {
      T* __restrict grad = a[0];
      T* __restrict m = a[1];
      const T bias = T(call.tensor_constants[tensor]);
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
// Constants: eta. Per tensor: 1 - beta^t.
template <typename T>
void l4_mom_move(const Call& call) {
  const T eta = T(call.constants[0]);
  lrlab::for_each_block<T, 2, 0>(call, [&](int64_t tensor, const lrlab::Arrays<T, 2>& a,
                                           int64_t n, double*) LRLAB_FLATTEN {
    T* __restrict p = a[0];
    T* __restrict m = a[1];
    const T bias = T(call.tensor_constants[tensor]);
    lrlab::elementwise<T>(n, [&](int64_t i) { p[i] = p[i] - eta * (m[i] / bias); });
  });
}

// L4Adam's first pass. Arrays: grad, m, s. Constants: 1 - beta1, beta2, 1 - beta2, adam_eps.
// Per tensor: 1 - beta1^t, 1 - beta2^t. Sum: <g_hat, v> with g_hat = m_new / (1 - beta1^t),
// v = g_hat / (sqrt(s_new / (1 - beta2^t)) + adam_eps).
template <typename T>
void l4_adam_moments(const Call& call) {
  const double* c = call.constants;
  const T weight = T(c[0]), beta2 = T(c[1]), one_minus_beta2 = T(c[2]), adam_eps = T(c[3]);
  with_flag(std::fabs(weight) < T(0.5), [&](auto small_weight) {
    lrlab::for_each_block<T, 3, 1>(call, [&](int64_t tensor, const lrlab::Arrays<T, 3>& a,
                                             int64_t n, double* sums) LRLAB_FLATTEN {
      T* __restrict grad = a[0];
      T* __restrict m = a[1];
      T* __restrict s = a[2];
      const T bias1 = T(call.tensor_constants[2 * tensor]);
      const T bias2 = T(call.tensor_constants[2 * tensor + 1]);
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
// it. Arrays: p, m, s. Constants: eta, adam_eps. Per tensor: 1 - beta1^t, 1 - beta2^t.
template <typename T>
void l4_adam_move(const Call& call) {
  const T eta = T(call.constants[0]), adam_eps = T(call.constants[1]);
  lrlab::for_each_block<T, 3, 0>(call, [&](int64_t tensor, const lrlab::Arrays<T, 3>& a,
                                           int64_t n, double*) LRLAB_FLATTEN {
    T* __restrict p = a[0];
    T* __restrict m = a[1];
    T* __restrict s = a[2];
    const T bias1 = T(call.tensor_constants[2 * tensor]);
    const T bias2 = T(call.tensor_constants[2 * tensor + 1]);
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
