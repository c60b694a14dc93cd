// Native multi-tensor kernels of D-Adaptation (lrlab/optim/dadaptation.py): the same arithmetic
// as the compiled kernels there, one call for all CPU tensors of one dtype.
#include "driver.h"

// BEGIN lrlab schema: generated from the Python schemas by lrlab.optim._executor (do not edit)
struct DAdaptSgdNormsScalars {
  double weight_decay;
  static constexpr int kCount = 1;
};
struct DAdaptSgdNormsSums {
  enum : int { raw_sq, decayed_sq, kCount };
};
struct DAdaptSgdDualScalars {
  double weight_decay;
  double lam;
  static constexpr int kCount = 2;
};
struct DAdaptSgdDualSums {
  enum : int { dot, s_sq, kCount };
};
struct DAdaptSgdStepScalars {
  double c;
  static constexpr int kCount = 1;
};
struct DAdaptAdamMomentsScalars {
  double r_lam;
  double coupled_decay;
  double eps;
  double beta1;
  double beta2;
  double root_beta2;
  double lam;
  double r;
  double move;
  static constexpr int kCount = 9;
};
struct DAdaptAdamMomentsSums {
  enum : int { dot, s_l1, kCount };
};
struct DAdaptAdamStepScalars {
  double decay;
  double eps;
  static constexpr int kCount = 2;
};
struct DAdaptAdaGradAccumulateScalars {
  double weight_decay;
  double eps;
  double lam;
  static constexpr int kCount = 3;
};
struct DAdaptAdaGradAccumulateSums {
  enum : int { old_s_sq, old_l1, weighted, new_s_sq, new_l1, kCount };
};
struct DAdaptAdaGradMoveScalars {
  double eps;
  double c;
  static constexpr int kCount = 2;
};
// END lrlab schema

namespace {

using lrlab::Call;

// DAdaptAdam's first pass. Arrays: grad, p, s, m, v. Scalars and sums: DAdaptAdamMoments above
// (move: also update p, when there is no decoupled decay).
template <typename T>
void dadapt_adam_moments(const Call& call) {
  const auto c = lrlab::scalars<DAdaptAdamMomentsScalars>(call);
  const T r_lam = T(c.r_lam), coupled = T(c.coupled_decay), eps = T(c.eps), beta1 = T(c.beta1),
          beta2 = T(c.beta2), root_beta2 = T(c.root_beta2), lam = T(c.lam);
  const T m_scale = r_lam * (T(1) - beta1), v_scale = T(1) - beta2,
          s_scale = lam * (T(1) - root_beta2);
  const double r_lam_sum = c.r_lam, r_sum = c.r;
  const bool move = c.move != 0.0;
  lrlab::for_each_block<T, 5, 2>(call, [=](int64_t, const lrlab::Arrays<T, 5>& a, int64_t n,
                                           double* sums) {
    T* __restrict grad = a[0];
    T* __restrict p = a[1];
    T* __restrict s = a[2];
    T* __restrict m = a[3];
    T* __restrict v = a[4];
    double local[2] = {0.0, 0.0};
    if (move) {
      lrlab::elementwise_sum2<T>(n, local, [=](int64_t i, T& dot, T& l1) {
        const T g = grad[i] + coupled * p[i];
        dot += g * (s[i] / (std::sqrt(v[i]) + eps));
        const T m_new = m[i] * beta1 + g * m_scale;
        const T v_new = v[i] * beta2 + v_scale * g * g;
        const T s_new = s[i] * root_beta2 + g * s_scale;
        m[i] = m_new;
        v[i] = v_new;
        s[i] = s_new;
        p[i] = p[i] - m_new / (std::sqrt(v_new) + eps);
        l1 += std::fabs(s_new);
      });
    } else {
      lrlab::elementwise_sum2<T>(n, local, [=](int64_t i, T& dot, T& l1) {
        const T g = grad[i] + coupled * p[i];
        dot += g * (s[i] / (std::sqrt(v[i]) + eps));
        const T s_new = s[i] * root_beta2 + g * s_scale;
        m[i] = m[i] * beta1 + g * m_scale;
        v[i] = v[i] * beta2 + v_scale * g * g;
        s[i] = s_new;
        l1 += std::fabs(s_new);
      });
    }
    sums[DAdaptAdamMomentsSums::dot] = local[DAdaptAdamMomentsSums::dot] * r_lam_sum;
    sums[DAdaptAdamMomentsSums::s_l1] = local[DAdaptAdamMomentsSums::s_l1] * r_sum;
  });
}

// DAdaptAdam's parameter update with decoupled decay. Arrays: p, m, v. Scalars: DAdaptAdamStep.
template <typename T>
void dadapt_adam_step(const Call& call) {
  const auto c = lrlab::scalars<DAdaptAdamStepScalars>(call);
  const T decay = T(c.decay), eps = T(c.eps);
  lrlab::for_each_block<T, 3, 0>(call, [=](int64_t, const lrlab::Arrays<T, 3>& a, int64_t n,
                                           double*) {
    T* __restrict p = a[0];
    T* __restrict m = a[1];
    T* __restrict v = a[2];
    lrlab::elementwise<T>(n, [=](int64_t i) {
      p[i] = p[i] - decay * p[i] - m[i] / (std::sqrt(v[i]) + eps);
    });
  });
}


// DAdaptSGD's first-step norms. Arrays: grad, p. Scalars and sums: DAdaptSgdNorms (raw_sq:
// ||grad||^2, the package's g0 norm is taken without decay; decayed_sq: ||grad + decay p||^2).
template <typename T>
void dadapt_sgd_norms(const Call& call) {
  const T decay = T(lrlab::scalars<DAdaptSgdNormsScalars>(call).weight_decay);
  lrlab::for_each_block<T, 2, 2>(call, [=](int64_t, const lrlab::Arrays<T, 2>& a, int64_t n,
                                           double* sums) {
    T* __restrict grad = a[0];
    T* __restrict p = a[1];
    lrlab::elementwise_sum2<T>(n, sums, [=](int64_t i, T& raw, T& decayed) {
      const T g = grad[i] + decay * p[i];
      raw += grad[i] * grad[i];
      decayed += g * g;
    });
  });
}

// DAdaptSGD's dual step. Arrays: grad, p, s. Scalars and sums: DAdaptSgdDual (dot: lam <g, s>
// with the old s; s_sq: ||s_new||^2).
template <typename T>
void dadapt_sgd_dual(const Call& call) {
  const auto c = lrlab::scalars<DAdaptSgdDualScalars>(call);
  const T decay = T(c.weight_decay), lam = T(c.lam);
  const double lam_sum = c.lam;
  lrlab::for_each_block<T, 3, 2>(call, [=](int64_t, const lrlab::Arrays<T, 3>& a, int64_t n,
                                           double* sums) {
    T* __restrict grad = a[0];
    T* __restrict p = a[1];
    T* __restrict s = a[2];
    double local[2] = {0.0, 0.0};
    lrlab::elementwise_sum2<T>(n, local, [=](int64_t i, T& dot, T& square) {
      const T g = grad[i] + decay * p[i];
      dot += g * s[i];
      const T s_new = s[i] + lam * g;
      s[i] = s_new;
      square += s_new * s_new;
    });
    sums[DAdaptSgdDualSums::dot] = local[DAdaptSgdDualSums::dot] * lam_sum;
    sums[DAdaptSgdDualSums::s_sq] = local[DAdaptSgdDualSums::s_sq];
  });
}

// DAdaptSGD's parameter update x = (1 - c) x + c (x0 - s). Arrays: p, x0, s. Scalars:
// DAdaptSgdStep; c = 1 (no momentum) writes x0 - s, as the reference, without reading the old x.
template <typename T>
void dadapt_sgd_step(const Call& call) {
  const double weight = lrlab::scalars<DAdaptSgdStepScalars>(call).c;
  const bool averaging = weight != 1.0;
  const T c = T(weight), keep = T(1.0 - weight);
  lrlab::for_each_block<T, 3, 0>(call, [=](int64_t, const lrlab::Arrays<T, 3>& a, int64_t n,
                                           double*) {
    T* __restrict p = a[0];
    T* __restrict x0 = a[1];
    T* __restrict s = a[2];
    if (averaging) {
      lrlab::elementwise<T>(n, [=](int64_t i) { p[i] = p[i] * keep + c * (x0[i] - s[i]); });
    } else {
      lrlab::elementwise<T>(n, [=](int64_t i) { p[i] = x0[i] - s[i]; });
    }
  });
}

// elementwise_sum4 of driver.h with a fifth sum (DAdaptAdaGrad needs five per tensor).
template <typename T, typename Element>
inline void elementwise_sum5(int64_t length, double* sums, Element element) {
  for (int64_t c = 0; c < length; c += lrlab::kChunk) {
    const int64_t end = c + lrlab::kChunk < length ? c + lrlab::kChunk : length;
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4)
    for (int64_t i = c; i < end; ++i) element(i, s0, s1, s2, s3, s4);
    sums[0] += s0;
    sums[1] += s1;
    sums[2] += s2;
    sums[3] += s3;
    sums[4] += s4;
  }
}

// DAdaptAdaGrad's statistics and accumulators. Arrays: grad, p, alpha, s. Scalars and sums:
// DAdaptAdaGradAccumulate (sum s^2 / (sqrt(a) + eps) and ||s||_1 before the update,
// sum g^2 / (sqrt(a_new) + eps), and sum s^2 / (sqrt(a_new) + eps) and ||s||_1 after it: the
// reference path subtracts each tensor's old sums from its new ones, so the caller does too).
// The sums' order in the loop below is the schema's (old_s_sq, old_l1, weighted, new_s_sq,
// new_l1): elementwise_sum5 fills them by position.
template <typename T>
void dadapt_adagrad_accumulate(const Call& call) {
  using Sums = DAdaptAdaGradAccumulateSums;
  static_assert(Sums::old_s_sq == 0 && Sums::old_l1 == 1 && Sums::weighted == 2 &&
                    Sums::new_s_sq == 3 && Sums::new_l1 == 4,
                "the loop below fills the sums in the schema's order");
  const auto c = lrlab::scalars<DAdaptAdaGradAccumulateScalars>(call);
  const T decay = T(c.weight_decay), eps = T(c.eps), lam = T(c.lam);
  lrlab::for_each_block<T, 4, 5>(call, [=](int64_t, const lrlab::Arrays<T, 4>& a, int64_t n,
                                           double* sums) {
    T* __restrict grad = a[0];
    T* __restrict p = a[1];
    T* __restrict alpha = a[2];
    T* __restrict s = a[3];
    elementwise_sum5<T>(n, sums, [=](int64_t i, T& old_sq, T& old_l1, T& weighted, T& new_sq,
                                     T& new_l1) {
      const T g = grad[i] + decay * p[i];
      old_sq += s[i] * s[i] / (std::sqrt(alpha[i]) + eps);
      old_l1 += std::fabs(s[i]);
      const T alpha_new = alpha[i] + g * g;
      const T metric = std::sqrt(alpha_new) + eps;
      weighted += g * g / metric;
      const T s_new = s[i] + g * lam;
      alpha[i] = alpha_new;
      s[i] = s_new;
      new_sq += s_new * s_new / metric;
      new_l1 += std::fabs(s_new);
    });
  });
}

// DAdaptAdaGrad's parameter update x = (1 - c) x + c z, z = x0 - s / (sqrt(a) + eps). Arrays:
// p, x0, s, alpha. Scalars: DAdaptAdaGradMove; c = 1 (no momentum) writes z, as the reference.
template <typename T>
void dadapt_adagrad_move(const Call& call) {
  const auto scalars = lrlab::scalars<DAdaptAdaGradMoveScalars>(call);
  const T eps = T(scalars.eps), c = T(scalars.c), keep = T(1.0 - scalars.c);
  const bool averaging = scalars.c != 1.0;
  lrlab::for_each_block<T, 4, 0>(call, [=](int64_t, const lrlab::Arrays<T, 4>& a, int64_t n,
                                           double*) {
    T* __restrict p = a[0];
    T* __restrict x0 = a[1];
    T* __restrict s = a[2];
    T* __restrict alpha = a[3];
    if (averaging) {
      lrlab::elementwise<T>(n, [=](int64_t i) {
        const T z = x0[i] - s[i] / (std::sqrt(alpha[i]) + eps);
        p[i] = p[i] * keep + c * z;
      });
    } else {
      lrlab::elementwise<T>(n, [=](int64_t i) { p[i] = x0[i] - s[i] / (std::sqrt(alpha[i]) + eps); });
    }
  });
}

}  // namespace

LRLAB_EXPORT(dadapt_adam_moments)
LRLAB_EXPORT(dadapt_adam_step)

LRLAB_EXPORT(dadapt_sgd_norms)
LRLAB_EXPORT(dadapt_sgd_dual)
LRLAB_EXPORT(dadapt_sgd_step)
LRLAB_EXPORT(dadapt_adagrad_accumulate)
LRLAB_EXPORT(dadapt_adagrad_move)
