// Native multi-tensor kernels of Prodigy (lrlab/optim/prodigy.py): the same arithmetic as the
// compiled kernels there, one call for all CPU tensors of one dtype.
#include "driver.h"

// BEGIN lrlab schema: generated from the Python schemas by lrlab.optim._executor (do not edit)
struct ProdigyMomentsScalars {
  double coupled_decay;
  double distance_scale;
  double beta1;
  double m_scale;
  double beta2;
  double v_scale;
  double beta3;
  double s_scale;
  double slice_p;
  static constexpr int kCount = 9;
};
struct ProdigyMomentsTensorScalars {
  double x0_broadcasts;
  static constexpr int kCount = 1;
};
struct ProdigyMomentsSums {
  enum : int { distance, l1, kCount };
};
struct ProdigyStepScalars {
  double decoupled_decay;
  double coupled_decay;
  double step;
  double eps;
  static constexpr int kCount = 4;
};
// END lrlab schema

namespace {

using lrlab::Call;

// Prodigy's first pass. Arrays: grad, p, x0, s, v and, with MOMENTUM, m. Scalars, tensor
// scalars and sums: the ProdigyMoments structs above (x0_broadcasts: 1 if x0 is one element
// that broadcasts, the 0-d x0 of an all-zero tensor).
//
// x0 and s hold every slice_p-th entry of the flattened tensor, so they are not cut into blocks
// like the other arrays: their pointers are taken from the call, not from the block, and a
// block updates the entries j whose element j * slice_p lies in it.
template <typename T, bool MOMENTUM>
void prodigy_moments(const Call& call) {
  constexpr int N = MOMENTUM ? 6 : 5;
  const auto c = lrlab::scalars<ProdigyMomentsScalars>(call);
  const T coupled = T(c.coupled_decay), beta1 = T(c.beta1), m_scale = T(c.m_scale),
          beta2 = T(c.beta2), v_scale = T(c.v_scale), beta3 = T(c.beta3), s_scale = T(c.s_scale);
  const double distance_scale = c.distance_scale;
  const int64_t slice = static_cast<int64_t>(c.slice_p);
  using Sums = ProdigyMomentsSums;
  lrlab::for_each_block<T, N, Sums::kCount>(call, [&](int64_t tensor, const lrlab::Arrays<T, N>& a,
                                                      int64_t n, double* sums) {
    T* __restrict grad = a[0];
    T* __restrict p = a[1];
    T* __restrict v = a[4];
    T* __restrict m = MOMENTUM ? a[N - 1] : nullptr;
    T* __restrict x0_all = reinterpret_cast<T*>(call.pointers[tensor * N + 2]);
    T* __restrict s_all = reinterpret_cast<T*>(call.pointers[tensor * N + 3]);
    const bool broadcast =
        lrlab::tensor_scalars<ProdigyMomentsTensorScalars>(call, tensor).x0_broadcasts != 0.0;
    double local[Sums::kCount] = {0.0, 0.0};
    if (slice == 1) {
      T* __restrict s = a[3];
      if (broadcast) {
        const T x0 = x0_all[0];
        lrlab::elementwise_sum2<T>(n, local, [&](int64_t i, T& distance, T& l1) {
          const T g = grad[i] + coupled * p[i];
          if (MOMENTUM) m[i] = m[i] * beta1 + g * m_scale;
          distance += g * (x0 - p[i]);
          v[i] = v[i] * beta2 + v_scale * g * g;
          const T s_new = s[i] * beta3 + g * s_scale;
          s[i] = s_new;
          l1 += std::fabs(s_new);
        });
      } else {
        T* __restrict x0 = a[2];
        lrlab::elementwise_sum2<T>(n, local, [&](int64_t i, T& distance, T& l1) {
          const T g = grad[i] + coupled * p[i];
          if (MOMENTUM) m[i] = m[i] * beta1 + g * m_scale;
          distance += g * (x0[i] - p[i]);
          v[i] = v[i] * beta2 + v_scale * g * g;
          const T s_new = s[i] * beta3 + g * s_scale;
          s[i] = s_new;
          l1 += std::fabs(s_new);
        });
      }
    } else {
      // the sliced entries with the sums, then the moments of every element (g is cheaper to
      // recompute than to store; this pass does not write x)
      const int64_t begin = grad - reinterpret_cast<T*>(call.pointers[tensor * N]);
      const int64_t first = (begin + slice - 1) / slice;
      const int64_t count = (begin + n + slice - 1) / slice - first;
      T* __restrict s = s_all + first;
      T* __restrict x0 = broadcast ? x0_all : x0_all + first;
      const int64_t x0_step = broadcast ? 0 : 1;
      const int64_t offset = first * slice - begin;
      lrlab::elementwise_sum2<T>(count, local, [&](int64_t j, T& distance, T& l1) {
        const int64_t i = offset + j * slice;
        const T g = grad[i] + coupled * p[i];
        distance += g * (x0[j * x0_step] - p[i]);
        const T s_new = s[j] * beta3 + g * s_scale;
        s[j] = s_new;
        l1 += std::fabs(s_new);
      });
      lrlab::elementwise<T>(n, [&](int64_t i) {
        const T g = grad[i] + coupled * p[i];
        if (MOMENTUM) m[i] = m[i] * beta1 + g * m_scale;
        v[i] = v[i] * beta2 + v_scale * g * g;
      });
    }
    sums[Sums::distance] = local[Sums::distance] * distance_scale;
    sums[Sums::l1] = local[Sums::l1];
  });
}

template <typename T>
void prodigy_moments_momentum(const Call& call) {
  prodigy_moments<T, true>(call);
}

template <typename T>
void prodigy_moments_without_momentum(const Call& call) {
  prodigy_moments<T, false>(call);
}

// Prodigy's parameter update. Arrays: p, direction (m, or the raw gradient with beta1 = 0), v.
// Scalars: ProdigyStepScalars above.
template <typename T>
void prodigy_step(const Call& call) {
  const auto c = lrlab::scalars<ProdigyStepScalars>(call);
  const T decay = T(c.decoupled_decay), coupled = T(c.coupled_decay), scale = T(c.step),
          eps = T(c.eps);
  lrlab::for_each_block<T, 3, 0>(call, [&](int64_t, const lrlab::Arrays<T, 3>& a, int64_t n,
                                           double*) {
    T* __restrict p = a[0];
    T* __restrict direction = a[1];
    T* __restrict v = a[2];
    lrlab::elementwise<T>(n, [&](int64_t i) {
      const T u = direction[i] + coupled * p[i];
      p[i] = p[i] + decay * p[i] + scale * u / (std::sqrt(v[i]) + eps);
    });
  });
}

}  // namespace

LRLAB_EXPORT(prodigy_moments_momentum)
LRLAB_EXPORT(prodigy_moments_without_momentum)
LRLAB_EXPORT(prodigy_step)
