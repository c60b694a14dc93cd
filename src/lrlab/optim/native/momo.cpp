// Native multi-tensor kernels of MoMo and MoMo-Adam (lrlab/optim/momo.py): the same arithmetic
// as the compiled kernels there, one call for all CPU tensors of one dtype. The scalars are
// read by name from the structs generated out of the Python schemas (block below).
#include "driver.h"

// BEGIN lrlab schema: generated from the Python schemas by lrlab.optim._executor (do not edit)
struct MomoAveragesScalars {
  double beta;
  double one_minus_beta;
  static constexpr int kCount = 2;
};
struct MomoAveragesTensorScalars {
  double starts;
  static constexpr int kCount = 1;
};
struct MomoAveragesSums {
  enum : int { gamma, dot, norm, kCount };
};
struct MomoMoveScalars {
  double minus_tau;
  double divisor;
  static constexpr int kCount = 2;
};
struct MomoAdamMomentsScalars {
  double beta1;
  double one_minus_beta1;
  double beta2;
  double one_minus_beta2;
  double eps;
  static constexpr int kCount = 5;
};
struct MomoAdamMomentsTensorScalars {
  double bias2;
  static constexpr int kCount = 1;
};
struct MomoAdamMomentsSums {
  enum : int { gamma, dot, norm, kCount };
};
struct MomoAdamMoveScalars {
  double decay;
  double minus_tau;
  double eps;
  double divisor;
  static constexpr int kCount = 4;
};
struct MomoAdamMoveTensorScalars {
  double bias2;
  static constexpr int kCount = 1;
};
// END lrlab schema

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

// gamma <- beta gamma + (1 - beta) <g, x> for every tensor. The blocks added <g, x> into the
// sum named gamma, which then receives the new gamma (the caller needs the sum of the gammas,
// not <g, x>). starts(t): whether tensor t's gamma starts at this <g, x> (its first step).
template <typename T, int NARRAYS, int NSUMS, int GAMMA, typename Starts>
void update_gammas(const Call& full, T beta, T one_minus_beta, Starts starts) {
  for (int64_t t = 0; t < full.n_tensors; ++t) {
    T* gamma = reinterpret_cast<T*>(full.pointers[t * (NARRAYS + 1) + NARRAYS]);
    double* sums = full.sums + t * NSUMS;
    const T grad_dot = T(sums[GAMMA]);
    const T previous = starts(t) ? grad_dot : gamma[0];
    const T updated = previous * beta + one_minus_beta * grad_dot;
    gamma[0] = updated;
    sums[GAMMA] = double(updated);
  }
}

// Momo's first pass. Arrays: grad, p, d, gamma (0-d). Scalars: MomoAveragesScalars (beta and
// one_minus_beta; per tensor, starts: 1 at a tensor's first step without bias correction,
// where gamma starts at <g, x> and d at g, its initial copy). Sums: gamma (the new gamma),
// <x, d_new>, ||d_new||^2.
template <typename T>
void momo_averages(const Call& call) {
  using Sums = MomoAveragesSums;
  // elementwise_sum3 fills the sums in its arguments' order
  static_assert(Sums::gamma == 0 && Sums::dot == 1 && Sums::norm == 2, "sum order");
  const auto c = lrlab::scalars<MomoAveragesScalars>(call);
  const T beta = T(c.beta), one_minus_beta = T(c.one_minus_beta);
  const WithoutGamma<3> bulk(call);
  lrlab::for_each_block<T, 3, Sums::kCount>(bulk.call, [&](int64_t, const lrlab::Arrays<T, 3>& a,
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
  update_gammas<T, 3, Sums::kCount, Sums::gamma>(call, beta, one_minus_beta, [&](int64_t t) {
    return lrlab::tensor_scalars<MomoAveragesTensorScalars>(call, t).starts != 0.0;
  });
}

// Momo's move x = (x - tau d) / (1 + lr wd). Arrays: p, d. Scalars: MomoMoveScalars.
template <typename T>
void momo_move(const Call& call) {
  const auto c = lrlab::scalars<MomoMoveScalars>(call);
  const T minus_tau = T(c.minus_tau), divisor = T(c.divisor);
  lrlab::for_each_block<T, 2, 0>(call, [&](int64_t, const lrlab::Arrays<T, 2>& a, int64_t n,
                                           double*) LRLAB_FLATTEN {
    T* __restrict p = a[0];
    T* __restrict d = a[1];
    lrlab::elementwise<T>(n, [&](int64_t i) { p[i] = (p[i] + minus_tau * d[i]) / divisor; });
  });
}

// MoMo-Adam's first pass. Arrays: grad, p, m, v, gamma (0-d). Scalars: MomoAdamMomentsScalars
// (per tensor, bias2 = 1 - beta2^t). Sums: gamma (the new gamma), <x, m_new>,
// <m_new, m_new / D> with D = sqrt(v_new / (1 - beta2^t)) + eps.
template <typename T>
void momo_adam_moments(const Call& call) {
  using Sums = MomoAdamMomentsSums;
  static_assert(Sums::gamma == 0 && Sums::dot == 1 && Sums::norm == 2, "sum order");
  const auto c = lrlab::scalars<MomoAdamMomentsScalars>(call);
  const T beta1 = T(c.beta1), one_minus_beta1 = T(c.one_minus_beta1), beta2 = T(c.beta2),
          one_minus_beta2 = T(c.one_minus_beta2), eps = T(c.eps);
  const WithoutGamma<4> bulk(call);
  lrlab::for_each_block<T, 4, Sums::kCount>(bulk.call, [&](int64_t tensor,
                                                           const lrlab::Arrays<T, 4>& a,
                                                           int64_t n, double* sums) LRLAB_FLATTEN {
    T* __restrict grad = a[0];
    T* __restrict p = a[1];
    T* __restrict m = a[2];
    T* __restrict v = a[3];
    const T bias2 = T(lrlab::tensor_scalars<MomoAdamMomentsTensorScalars>(call, tensor).bias2);
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
  update_gammas<T, 4, Sums::kCount, Sums::gamma>(call, beta1, one_minus_beta1,
                                                 [](int64_t) { return false; });
}

// MoMo-Adam's move x = (decay x - tau m / D) / divisor. Arrays: p, m, v. Scalars:
// MomoAdamMoveScalars (decay: 1 - lr wd in the AdamW form, else 1; divisor: 1 + lr wd with
// divide, else 1; per tensor, bias2 = 1 - beta2^t).
template <typename T>
void momo_adam_move(const Call& call) {
  const auto c = lrlab::scalars<MomoAdamMoveScalars>(call);
  const T decay = T(c.decay), minus_tau = T(c.minus_tau), eps = T(c.eps), divisor = T(c.divisor);
  lrlab::for_each_block<T, 3, 0>(call, [&](int64_t tensor, const lrlab::Arrays<T, 3>& a,
                                           int64_t n, double*) LRLAB_FLATTEN {
    T* __restrict p = a[0];
    T* __restrict m = a[1];
    T* __restrict v = a[2];
    const T bias2 = T(lrlab::tensor_scalars<MomoAdamMoveTensorScalars>(call, tensor).bias2);
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
