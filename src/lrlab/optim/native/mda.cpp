// Native multi-tensor kernel of MDA (lrlab/optim/mda.py): the same arithmetic as the compiled
// kernel there, one call for all CPU tensors of one dtype. Every scalar of the step is known
// before it, so the whole step is one pass over memory.
#include "driver.h"

// BEGIN lrlab schema: generated from the Python schemas by lrlab.optim._executor (do not edit)
struct MdaStepScalars {
  double weight_decay;
  double lam;
  double inverse_beta;
  double c;
  static constexpr int kCount = 4;
};
// END lrlab schema

namespace {

using lrlab::Call;
using lrlab::lerp;
using lrlab::with_flag;

// One MDA step. Arrays: grad, p, s, x0. Scalars: MdaStepScalars (inverse_beta: -1 / beta_{k+1};
// c = 1 - momentum). g = grad + decay p, s += lambda g, z = x0 - s / beta, p = lerp(p, z, c);
// c = 1 (no momentum) writes z, as the reference path, without reading the old p.
template <typename T>
void mda_step(const Call& call) {
  const auto scalars = lrlab::scalars<MdaStepScalars>(call);
  const T decay = T(scalars.weight_decay), lam = T(scalars.lam),
          inverse_beta = T(scalars.inverse_beta), c = T(scalars.c);
  const bool decayed = scalars.weight_decay != 0.0, small = std::fabs(scalars.c) < 0.5,
             averaging = scalars.c != 1.0;
  with_flag(decayed, [&](auto has_decay) {
   with_flag(averaging, [&](auto has_averaging) {
    with_flag(small, [&](auto small_weight) {
      lrlab::for_each_block<T, 4, 0>(call, [&](int64_t, const lrlab::Arrays<T, 4>& a,
                                               int64_t n, double*) {
        T* __restrict grad = a[0];
        T* __restrict p = a[1];
        T* __restrict s = a[2];
        T* __restrict x0 = a[3];
        lrlab::elementwise<T>(n, [&](int64_t i) {
          // no decay: the gradient alone, as the reference path (the compiled kernel adds 0 p)
          const T g = has_decay.value ? grad[i] + decay * p[i] : grad[i];
          const T s_new = s[i] + lam * g;
          s[i] = s_new;
          const T z = x0[i] + inverse_beta * s_new;
          p[i] = has_averaging.value ? lerp<small_weight.value>(p[i], z, c) : z;
        });
      });
    });
   });
  });
}

}  // namespace

LRLAB_EXPORT(mda_step)
