// Native multi-tensor kernels of GradaGrad (lrlab/optim/gradagrad.py): the same arithmetic as
// the compiled kernels there, one call for all CPU tensors of one dtype.
#include "driver.h"

// BEGIN lrlab schema: generated from the Python schemas by lrlab.optim._executor (do not edit)
struct GradaGradSumsScalars {
  static constexpr int kCount = 0;
};
struct GradaGradSumsSums {
  enum : int { square, dot, kCount };
};
struct GradaGradMoveScalars {
  double step_size;
  static constexpr int kCount = 1;
};
// END lrlab schema

namespace {

using lrlab::Call;

// The first pass. Arrays: grad, g_prev. Sums: GradaGradSums (||g||^2, <g, g_prev>); then
// g_prev = g in the same sweep (the move reads g itself, so the old g_prev is not needed after
// this pass). The copy is a second loop over each run of kChunk elements, still in L1: with the
// store in the reduction loop gcc's code ran at a third of the memory bandwidth.
template <typename T>
void gradagrad_sums(const Call& call) {
  using Sums = GradaGradSumsSums;
  lrlab::for_each_block<T, 2, Sums::kCount>(call, [&](int64_t, const lrlab::Arrays<T, 2>& a,
                                                      int64_t n, double* sums) {
    T* __restrict grad = a[0];
    T* __restrict previous = a[1];
    for (int64_t c = 0; c < n; c += lrlab::kChunk) {
      const int64_t end = c + lrlab::kChunk < n ? c + lrlab::kChunk : n;
      T square = 0, dot = 0;
#pragma omp simd reduction(+ : square, dot)
      for (int64_t i = c; i < end; ++i) {
        square += grad[i] * grad[i];
        dot += grad[i] * previous[i];
      }
      sums[Sums::square] += square;
      sums[Sums::dot] += dot;
#pragma omp simd
      for (int64_t i = c; i < end; ++i) previous[i] = grad[i];
    }
  });
}

// The move x <- x - step_size g. Arrays: p, grad. Scalars: GradaGradMove.
template <typename T>
void gradagrad_move(const Call& call) {
  const T step_size = T(lrlab::scalars<GradaGradMoveScalars>(call).step_size);
  lrlab::for_each_block<T, 2, 0>(call, [&](int64_t, const lrlab::Arrays<T, 2>& a, int64_t n,
                                           double*) {
    T* __restrict p = a[0];
    T* __restrict grad = a[1];
    lrlab::elementwise<T>(n, [&](int64_t i) { p[i] = p[i] - step_size * grad[i]; });
  });
}

}  // namespace

LRLAB_EXPORT(gradagrad_sums)
LRLAB_EXPORT(gradagrad_move)
