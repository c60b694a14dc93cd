// Native multi-tensor kernels of MoMo and MoMo-Adam (lrlab/optim/momo.py): the same arithmetic
// as the compiled kernels there, one call for all CPU tensors of one dtype.
#include "driver.h"

namespace {

using lrlab::Call;

// The first passes take, after the full-size arrays, the tensor's 0-d average gamma of <g, x>.
// Its update needs the whole tensor's <g, x>, known only once every block is done, so the
// elementwise work runs on the full-size arrays alone (a copy of the call without the gamma
// pointers) and gamma is updated afterwards, one scalar per tensor.
template <int NARRAYS>
struct WithoutGamma {
  std::vector<int64_t> pointers;
  Call call;

  explicit WithoutGamma(const Call& full) : pointers(full.n_tensors * NARRAYS), call(full) {
    for (int64_t t = 0; t < full.n_tensors; ++t) {
      for (int a = 0; a < NARRAYS; ++a) {
        pointers[t * NARRAYS + a] = full.pointers[t * (NARRAYS + 1) + a];
      }
    }
    call.pointers = pointers.data();
  }
};

// gamma <- beta gamma + (1 - beta) <g, x> for every tensor, from the first of its sums, which
// is then replaced by the new gamma (the caller needs the sum of the gammas, not <g, x>).
// `starts` (null: none) marks with 1 the tensors whose gamma starts at this <g, x>.
template <typename T, int NARRAYS, int NSUMS>
void update_gammas(const Call& full, T beta, T one_minus_beta, const double* starts) {
  for (int64_t t = 0; t < full.n_tensors; ++t) {
    T* gamma = reinterpret_cast<T*>(full.pointers[t * (NARRAYS + 1) + NARRAYS]);
    double* sums = full.sums + t * NSUMS;
    const T grad_dot = T(sums[0]);
    const T previous = starts != nullptr && starts[t] != 0.0 ? grad_dot : gamma[0];
    const T updated = previous * beta + one_minus_beta * grad_dot;
    gamma[0] = updated;
    sums[0] = double(updated);
  }
}

// Momo's first pass. Arrays: grad, p, d, gamma (0-d). Constants: beta, 1 - beta. Per tensor:
// 1 at a tensor's first step without bias correction, where gamma starts at <g, x> (d at g, its
// initial copy), else 0. Sums: gamma_new, <x, d_new>, ||d_new||^2.
template <typename T>
void momo_averages(const Call& call) {
  const T beta = T(call.constants[0]), one_minus_beta = T(call.constants[1]);
  const WithoutGamma<3> bulk(call);
  lrlab::for_each_block<T, 3, 3>(bulk.call, [&](int64_t, const lrlab::Arrays<T, 3>& a,
                                                int64_t n, double* sums) LRLAB_FLATTEN {
    T* __restrict grad = a[0];
    T* __restrict p = a[1];
    T* __restrict d = a[2];
    lrlab::elementwise_sum3<T>(n, sums, [&](int64_t i, T& grad_dot, T& dot, T& square) {
      const T x = p[i], g = grad[i];
      const T d_new = d[i] * beta + one_minus_beta * g;
      d[i] = d_new;
      grad_dot += x * g;
      dot += x * d_new;
      square += d_new * d_new;
    });
  });
  update_gammas<T, 3, 3>(call, beta, one_minus_beta, call.tensor_constants);
}

// Momo's move. Arrays: p, d. Constants: -tau, 1 + lr wd (1 without weight decay).
template <typename T>
void momo_move(const Call& call) {
  const T minus_tau = T(call.constants[0]), divisor = T(call.constants[1]);
  lrlab::for_each_block<T, 2, 0>(call, [&](int64_t, const lrlab::Arrays<T, 2>& a, int64_t n,
                                           double*) LRLAB_FLATTEN {
    T* __restrict p = a[0];
    T* __restrict d = a[1];
    lrlab::elementwise<T>(n, [&](int64_t i) { p[i] = (p[i] + minus_tau * d[i]) / divisor; });
  });
}

// MoMo-Adam's first pass. Arrays: grad, p, m, v, gamma (0-d). Constants: beta1, 1 - beta1,
// beta2, 1 - beta2, eps. Per tensor: 1 - beta2^t. Sums: gamma_new, <x, m_new>,
// <m_new, m_new / D> with D = sqrt(v_new / (1 - beta2^t)) + eps.
template <typename T>
void momo_adam_moments(const Call& call) {
  const double* c = call.constants;
  const T beta1 = T(c[0]), one_minus_beta1 = T(c[1]), beta2 = T(c[2]), one_minus_beta2 = T(c[3]),
          eps = T(c[4]);
  const WithoutGamma<4> bulk(call);
  lrlab::for_each_block<T, 4, 3>(bulk.call, [&](int64_t tensor, const lrlab::Arrays<T, 4>& a,
                                                int64_t n, double* sums) LRLAB_FLATTEN {
    T* __restrict grad = a[0];
    T* __restrict p = a[1];
    T* __restrict m = a[2];
    T* __restrict v = a[3];
    const T bias2 = T(call.tensor_constants[tensor]);
    lrlab::elementwise_sum3<T>(n, sums, [&](int64_t i, T& grad_dot, T& dot, T& scaled_square) {
      const T x = p[i], g = grad[i];
      const T m_new = m[i] * beta1 + one_minus_beta1 * g;
      const T v_new = v[i] * beta2 + one_minus_beta2 * g * g;
      m[i] = m_new;
      v[i] = v_new;
      grad_dot += x * g;
      dot += x * m_new;
      scaled_square += m_new * (m_new / (std::sqrt(v_new / bias2) + eps));
    });
  });
  update_gammas<T, 4, 3>(call, beta1, one_minus_beta1, nullptr);
}

// MoMo-Adam's move. Arrays: p, m, v. Constants: 1 - lr wd (AdamW form) or 1, -tau, eps,
// 1 + lr wd (divide) or 1. Per tensor: 1 - beta2^t.
template <typename T>
void momo_adam_move(const Call& call) {
  const double* c = call.constants;
  const T decay = T(c[0]), minus_tau = T(c[1]), eps = T(c[2]), divisor = T(c[3]);
  lrlab::for_each_block<T, 3, 0>(call, [&](int64_t tensor, const lrlab::Arrays<T, 3>& a,
                                           int64_t n, double*) LRLAB_FLATTEN {
    T* __restrict p = a[0];
    T* __restrict m = a[1];
    T* __restrict v = a[2];
    const T bias2 = T(call.tensor_constants[tensor]);
    lrlab::elementwise<T>(n, [&](int64_t i) {
      p[i] = (p[i] * decay + minus_tau * m[i] / (std::sqrt(v[i] / bias2) + eps)) / divisor;
    });
  });
}

}  // namespace

LRLAB_EXPORT(momo_averages)
LRLAB_EXPORT(momo_move)
LRLAB_EXPORT(momo_adam_moments)
LRLAB_EXPORT(momo_adam_move)
