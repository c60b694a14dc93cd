// Native multi-tensor kernels of the 2017 path-length methods (lrlab/optim/alera.py): ALeRA,
// SALeRA, Ag-Adam and SPALeRA. The same arithmetic as the compiled kernels there, one call for
// all CPU tensors of one dtype. Pass (1) gathers the sums that the rates need before anything
// moves; pass (2) moves the path, the method's state and the parameter (NOTE [the 2017 scheme
// fused] in alera.py).
#include <cstring>

#include "driver.h"

// BEGIN lrlab schema: generated from the Python schemas by lrlab.optim._executor (do not edit)
struct AleraPathSumsScalars {
  static constexpr int kCount = 0;
};
struct AleraPathSumsSums {
  enum : int { path_sq, dot, grad_sq, kCount };
};
struct AleraDecayedPathSumsScalars {
  double weight_decay;
  static constexpr int kCount = 1;
};
struct AleraDecayedPathSumsSums {
  enum : int { path_sq, dot, grad_sq, kCount };
};
struct AleraMoveScalars {
  double weight_decay;
  double alpha;
  static constexpr int kCount = 2;
};
struct AleraMoveTensorScalars {
  double inverse_norm;
  double eta;
  static constexpr int kCount = 2;
};
struct SaleraMoveScalars {
  double weight_decay;
  double alpha;
  double one;
  static constexpr int kCount = 3;
};
struct SaleraMoveTensorScalars {
  double inverse_norm;
  double eta;
  static constexpr int kCount = 2;
};
struct AgAdamMoveScalars {
  double weight_decay;
  double alpha;
  double weight1;
  double beta2;
  double weight2;
  double eps;
  static constexpr int kCount = 6;
};
struct AgAdamMoveTensorScalars {
  double inverse_norm;
  double size;
  static constexpr int kCount = 2;
};
struct SpaleraGradSqScalars {
  static constexpr int kCount = 0;
};
struct SpaleraGradSqSums {
  enum : int { grad_sq, kCount };
};
struct SpaleraDecayedGradSqScalars {
  double weight_decay;
  static constexpr int kCount = 1;
};
struct SpaleraDecayedGradSqSums {
  enum : int { grad_sq, kCount };
};
struct SpaleraMoveScalars {
  double weight_decay;
  double inverse_norm;
  double alpha;
  double gain;
  double offset;
  double eta;
  double one;
  static constexpr int kCount = 7;
};
// END lrlab schema

namespace {

using lrlab::Call;
using lrlab::lerp;
using lrlab::with_flag;

// 2^n for an integer n in the normal exponent range, by building the bits (ldexp does not
// vectorise).
inline double power_of_two(int64_t n) {
  const int64_t bits = (n + 1023) << 52;
  double result;
  std::memcpy(&result, &bits, sizeof result);
  return result;
}

inline float power_of_two(int32_t n) {
  const int32_t bits = (n + 127) << 23;
  float result;
  std::memcpy(&result, &bits, sizeof result);
  return result;
}

// exp that vectorises: glibc's vector exp (libmvec) is declared only under -ffast-math, which
// the build must not use, and a scalar std::exp per element made SPALeRA's move compute-bound.
// x = n ln2 + r (Cody-Waite, |r| <= ln2 / 2), exp(r) by its Taylor series to below an ulp
// (degree 13 in double, 7 in float), times 2^n applied in two halves so that results near the
// ends of the range overflow to inf and underflow gradually to 0 as std::exp's do. NaN stays NaN.
template <typename T>
struct ExpConstants;

template <>
struct ExpConstants<double> {
  static constexpr double lowest = -746.0, highest = 710.0;
  static constexpr double ln2_high = 0.693147180369123816490, ln2_low = 1.90821492927058770002e-10;
  static constexpr int degree = 13;
  using Integer = int64_t;
};

template <>
struct ExpConstants<float> {
  static constexpr float lowest = -104.0f, highest = 89.0f;
  static constexpr float ln2_high = 0.693145751953125f, ln2_low = 1.428606765330187045e-06f;
  static constexpr int degree = 7;
  using Integer = int32_t;
};

// 1/k! for k = 0..13, in double
constexpr double kInverseFactorials[14] = {
    1.0,
    1.0,
    1.0 / 2,
    1.0 / 6,
    1.0 / 24,
    1.0 / 120,
    1.0 / 720,
    1.0 / 5040,
    1.0 / 40320,
    1.0 / 362880,
    1.0 / 3628800,
    1.0 / 39916800,
    1.0 / 479001600,
    1.0 / 6227020800,
};

template <typename T>
inline T vector_exp(T x) {
  using K = ExpConstants<T>;
  x = x < K::lowest ? K::lowest : x;
  x = x > K::highest ? K::highest : x;
  const T n = std::nearbyint(x * T(1.44269504088896340736));
  const T r = (x - n * K::ln2_high) - n * K::ln2_low;
  // Horner over the coefficients 1/k!, highest first (no division per element)
  T series = T(kInverseFactorials[K::degree]);
  for (int k = K::degree - 1; k >= 0; --k) series = series * r + T(kInverseFactorials[k]);
  // the halving in integers: std::trunc kept GCC from vectorising the loop
  const typename K::Integer whole = static_cast<typename K::Integer>(n), half = whole >> 1;
  return series * power_of_two(half) * power_of_two(whole - half);
}

// Pass (1) of ALeRA, SALeRA and Ag-Adam without decay. Arrays: grad, path. Scalars:
// AleraPathSums (none). Sums: path_sq ||path||^2, dot <path, g>, grad_sq ||g||^2 (before the
// update), in that order.
template <typename T>
void alera_statistics(const Call& call) {
  static_assert(AleraPathSumsSums::path_sq == 0 && AleraPathSumsSums::dot == 1 &&
                    AleraPathSumsSums::grad_sq == 2,
                "elementwise_sum3 fills the sums in the schema's order");
  lrlab::for_each_block<T, 2, 3>(call, [&](int64_t, const lrlab::Arrays<T, 2>& a, int64_t n,
                                           double* sums) {
    T* __restrict grad = a[0];
    T* __restrict path = a[1];
    lrlab::elementwise_sum3<T>(n, sums, [=](int64_t i, T& path_sq, T& dot, T& grad_sq) {
      const T g = grad[i];
      const T q = path[i];
      path_sq += q * q;
      dot += q * g;
      grad_sq += g * g;
    });
  });
}

// Pass (1) of ALeRA, SALeRA and Ag-Adam with decay (g = grad + decay x). Arrays: grad, p, path.
// Scalars: AleraDecayedPathSums. Sums: as alera_statistics.
template <typename T>
void alera_decayed_statistics(const Call& call) {
  static_assert(AleraDecayedPathSumsSums::path_sq == 0 && AleraDecayedPathSumsSums::dot == 1 &&
                    AleraDecayedPathSumsSums::grad_sq == 2,
                "elementwise_sum3 fills the sums in the schema's order");
  const T decay = T(lrlab::scalars<AleraDecayedPathSumsScalars>(call).weight_decay);
  lrlab::for_each_block<T, 3, 3>(call, [&](int64_t, const lrlab::Arrays<T, 3>& a, int64_t n,
                                           double* sums) {
    T* __restrict grad = a[0];
    T* __restrict p = a[1];
    T* __restrict path = a[2];
    lrlab::elementwise_sum3<T>(n, sums, [=](int64_t i, T& path_sq, T& dot, T& grad_sq) {
      const T g = grad[i] + decay * p[i];
      const T q = path[i];
      path_sq += q * q;
      dot += q * g;
      grad_sq += g * g;
    });
  });
}

// Pass (1) of SPALeRA without decay. Arrays: grad. Scalars: SpaleraGradSq (none). Sums: grad_sq
// ||g||^2.
template <typename T>
void spalera_grad_sq(const Call& call) {
  lrlab::for_each_block<T, 1, 1>(call, [&](int64_t, const lrlab::Arrays<T, 1>& a, int64_t n,
                                           double* sums) {
    T* __restrict grad = a[0];
    lrlab::elementwise_sum1<T>(n, sums, [=](int64_t i, T& grad_sq) { grad_sq += grad[i] * grad[i]; });
  });
}

// Pass (1) of SPALeRA with decay. Arrays: grad, p. Scalars: SpaleraDecayedGradSq. Sums: grad_sq
// ||g||^2.
template <typename T>
void spalera_decayed_grad_sq(const Call& call) {
  const T decay = T(lrlab::scalars<SpaleraDecayedGradSqScalars>(call).weight_decay);
  lrlab::for_each_block<T, 2, 1>(call, [&](int64_t, const lrlab::Arrays<T, 2>& a, int64_t n,
                                           double* sums) {
    T* __restrict grad = a[0];
    T* __restrict p = a[1];
    lrlab::elementwise_sum1<T>(n, sums, [=](int64_t i, T& grad_sq) {
      const T g = grad[i] + decay * p[i];
      grad_sq += g * g;
    });
  });
}

// Pass (2) of ALeRA: path <- lerp(path, g / ||g_l||, alpha), x <- x - eta g. Arrays: grad, p,
// path. Scalars: AleraMove (per tensor: its block's inverse_norm 1/||g_l|| or 0, and eta).
template <typename T>
void alera_move(const Call& call) {
  const auto c = lrlab::scalars<AleraMoveScalars>(call);
  const T decay = T(c.weight_decay), alpha = T(c.alpha);
  const bool small_alpha = std::fabs(c.alpha) < 0.5;
  lrlab::for_each_block<T, 3, 0>(call, [&](int64_t tensor, const lrlab::Arrays<T, 3>& a,
                                           int64_t n, double*) {
    const auto block = lrlab::tensor_scalars<AleraMoveTensorScalars>(call, tensor);
    const T inverse_norm = T(block.inverse_norm), eta = T(block.eta);
    T* __restrict grad = a[0];
    T* __restrict p = a[1];
    T* __restrict path = a[2];
    with_flag(small_alpha, [&](auto small) {
      lrlab::elementwise<T>(n, [=](int64_t i) {
        const T x = p[i];
        const T g = grad[i] + decay * x;
        path[i] = lerp<small.value>(path[i], g * inverse_norm, alpha);
        p[i] = x - eta * g;
      });
    });
  });
}

// Pass (2) of SALeRA: prev <- x (the parameter before this move, restored on an alarm), then
// ALeRA's move. Arrays: grad, p, path, prev. Scalars: SaleraMove (alera_move's; its "one" is the
// compiled kernel's and is not read here).
template <typename T>
void salera_move(const Call& call) {
  const auto c = lrlab::scalars<SaleraMoveScalars>(call);
  const T decay = T(c.weight_decay), alpha = T(c.alpha);
  const bool small_alpha = std::fabs(c.alpha) < 0.5;
  lrlab::for_each_block<T, 4, 0>(call, [&](int64_t tensor, const lrlab::Arrays<T, 4>& a,
                                           int64_t n, double*) {
    const auto block = lrlab::tensor_scalars<SaleraMoveTensorScalars>(call, tensor);
    const T inverse_norm = T(block.inverse_norm), eta = T(block.eta);
    T* __restrict grad = a[0];
    T* __restrict p = a[1];
    T* __restrict path = a[2];
    T* __restrict prev = a[3];
    with_flag(small_alpha, [&](auto small) {
      lrlab::elementwise<T>(n, [=](int64_t i) {
        const T x = p[i];
        const T g = grad[i] + decay * x;
        prev[i] = x;
        path[i] = lerp<small.value>(path[i], g * inverse_norm, alpha);
        p[i] = x - eta * g;
      });
    });
  });
}

// Pass (2) of Ag-Adam: the path as ALeRA, Adam's moments, and x <- x - size m / (sqrt(v) + eps).
// Arrays: grad, p, path, m, v. Scalars: AgAdamMove (weight1: 1 - beta1, weight2: 1 - beta2; per
// tensor: inverse_norm 1/||g_l|| or 0, size = eta sqrt(1 - beta2^t) / (1 - beta1^t)).
template <typename T>
void agadam_move(const Call& call) {
  const auto c = lrlab::scalars<AgAdamMoveScalars>(call);
  const T decay = T(c.weight_decay), alpha = T(c.alpha), one_minus_beta1 = T(c.weight1),
          beta2 = T(c.beta2), one_minus_beta2 = T(c.weight2), eps = T(c.eps);
  const bool small_alpha = std::fabs(c.alpha) < 0.5, small_momentum = std::fabs(c.weight1) < 0.5;
  lrlab::for_each_block<T, 5, 0>(call, [&](int64_t tensor, const lrlab::Arrays<T, 5>& a,
                                           int64_t n, double*) {
    const auto block = lrlab::tensor_scalars<AgAdamMoveTensorScalars>(call, tensor);
    const T inverse_norm = T(block.inverse_norm), size = T(block.size);
    T* __restrict grad = a[0];
    T* __restrict p = a[1];
    T* __restrict path = a[2];
    T* __restrict m = a[3];
    T* __restrict v = a[4];
    with_flag(small_alpha, [&](auto small) {
      with_flag(small_momentum, [&](auto small_m) {
        lrlab::elementwise<T>(n, [=](int64_t i) {
          const T x = p[i];
          const T g = grad[i] + decay * x;
          path[i] = lerp<small.value>(path[i], g * inverse_norm, alpha);
          const T m_new = lerp<small_m.value>(m[i], g, one_minus_beta1);
          const T v_new = v[i] * beta2 + one_minus_beta2 * g * g;
          m[i] = m_new;
          v[i] = v_new;
          p[i] = x - size * (m_new / (std::sqrt(v_new) + eps));
        });
      });
    });
  });
}

// Pass (2) of SPALeRA: prev <- x, path <- lerp(path, g / ||g||, alpha),
// a <- a exp(gain path^2 + offset), x <- x - eta (a g). Arrays: grad, p, path, multiplier, prev.
// Scalars: SpaleraMove (inverse_norm: 1/||g|| or 0, gain: C D / alpha, offset: -C mu_t / alpha;
// its "one" is the compiled kernel's and is not read here).
template <typename T>
void spalera_move(const Call& call) {
  const auto c = lrlab::scalars<SpaleraMoveScalars>(call);
  const T decay = T(c.weight_decay), inverse_norm = T(c.inverse_norm), alpha = T(c.alpha),
          gain = T(c.gain), offset = T(c.offset), eta = T(c.eta);
  const bool small_alpha = std::fabs(c.alpha) < 0.5;
  lrlab::for_each_block<T, 5, 0>(call, [&](int64_t, const lrlab::Arrays<T, 5>& a, int64_t n,
                                           double*) {
    T* __restrict grad = a[0];
    T* __restrict p = a[1];
    T* __restrict path = a[2];
    T* __restrict multiplier = a[3];
    T* __restrict prev = a[4];
    with_flag(small_alpha, [&](auto small) {
      lrlab::elementwise<T>(n, [=](int64_t i) {
        const T x = p[i];
        const T g = grad[i] + decay * x;
        const T new_path = lerp<small.value>(path[i], g * inverse_norm, alpha);
        const T new_multiplier = multiplier[i] * vector_exp(new_path * new_path * gain + offset);
        prev[i] = x;
        path[i] = new_path;
        multiplier[i] = new_multiplier;
        p[i] = x - eta * (new_multiplier * g);
      });
    });
  });
}

}  // namespace

LRLAB_EXPORT(alera_statistics)
LRLAB_EXPORT(alera_decayed_statistics)
LRLAB_EXPORT(spalera_grad_sq)
LRLAB_EXPORT(spalera_decayed_grad_sq)
LRLAB_EXPORT(alera_move)
LRLAB_EXPORT(salera_move)
LRLAB_EXPORT(agadam_move)
LRLAB_EXPORT(spalera_move)
