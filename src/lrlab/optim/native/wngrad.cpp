// Native multi-tensor kernels of WNGrad and WN-Adam (lrlab/optim/wngrad.py): the arithmetic of
// the for-loop path, one call per pass for all CPU tensors of one dtype.
//
// A "tensor" of these calls is one block of b: a whole parameter (global and per-tensor
// granularity) or one row of it (per-row granularity; the Python side passes each row's
// address as its own tensor). Three passes for per-tensor and per-row b: the blocks' sums of
// squares, b itself (one element per block; it returns the new b as its sum, so that the move
// gets it as a per-block constant without reading b again), and the move. Global b: the sums,
// then the move with b = 1 per block (division by 1 is exact) and the step size in the scale.
#include "driver.h"

namespace {

using lrlab::Call;

// WNGrad's first pass. Arrays: grad, p. Constants: weight decay. Tensor constants: the factor
// of the block's sum (lr^2, 0 for a block whose b stays b0, 1 for global b).
// Sums: factor * ||grad + wd p||^2.
template <typename T>
void wngrad_squares(const Call& call) {
  const T decay = T(call.constants[0]);
  const bool decayed = call.constants[0] != 0.0;
  lrlab::for_each_block<T, 2, 1>(call, [&](int64_t tensor, const lrlab::Arrays<T, 2>& a,
                                           int64_t n, double* sums) {
    T* __restrict grad = a[0];
    T* __restrict p = a[1];
    double local[1] = {0.0};
    // without decay the loop path uses the gradient itself (not g + 0 p, which differs for a
    // non-finite p), and the kernel need not read p at all
    if (decayed) {
      lrlab::elementwise_sum1<T>(n, local, [&](int64_t i, T& square) {
        const T g = grad[i] + decay * p[i];
        square += g * g;
      });
    } else {
      lrlab::elementwise_sum1<T>(n, local, [&](int64_t i, T& square) {
        const T g = grad[i];
        square += g * g;
      });
    }
    sums[0] = local[0] * call.tensor_constants[tensor];
  });
}

// WN-Adam's first pass: the momentum (it does not wait for b) and the block's sum of squares.
// Arrays: grad, p, m. Constants: weight decay, 1 - beta. Tensor constants and sums: as
// wngrad_squares.
template <typename T>
void wnadam_moment(const Call& call) {
  const T decay = T(call.constants[0]), weight = T(call.constants[1]);
  const T complement = T(1) - weight;
  const bool decayed = call.constants[0] != 0.0;
  // torch.lerp's two formulas, chosen by the weight as torch does
  const bool small_weight = std::fabs(weight) < T(0.5);
  lrlab::for_each_block<T, 3, 1>(call, [&](int64_t tensor, const lrlab::Arrays<T, 3>& a,
                                           int64_t n, double* sums) {
    T* __restrict grad = a[0];
    T* __restrict p = a[1];
    T* __restrict m = a[2];
    double local[1] = {0.0};
    // the branches outside the loops: one straight-line loop body each vectorises
    auto run = [&](auto gradient, auto lerp) {
      lrlab::elementwise_sum1<T>(n, local, [&](int64_t i, T& square) {
        const T g = gradient(i);
        m[i] = lerp(m[i], g);
        square += g * g;
      });
    };
    auto plain = [&](int64_t i) { return grad[i]; };
    auto decayed_grad = [&](int64_t i) { return grad[i] + decay * p[i]; };
    auto from_start = [&](T start, T end) { return start + weight * (end - start); };
    auto from_end = [&](T start, T end) { return end - (end - start) * complement; };
    if (decayed && small_weight) run(decayed_grad, from_start);
    else if (decayed) run(decayed_grad, from_end);
    else if (small_weight) run(plain, from_start);
    else run(plain, from_end);
    sums[0] = local[0] * call.tensor_constants[tensor];
  });
}

// b <- b + increment / b for every block. Arrays: b (one element per block). Tensor
// constants: the increment (the first pass's sum). Sums: the new b (exact: a T in a double).
template <typename T>
void wngrad_accumulate(const Call& call) {
  lrlab::for_each_block<T, 1, 1>(call, [&](int64_t tensor, const lrlab::Arrays<T, 1>& a,
                                           int64_t n, double* sums) {
    T* __restrict b = a[0];
    const T increment = T(call.tensor_constants[tensor]);
    for (int64_t i = 0; i < n; ++i) {
      const T old = b[i];
      b[i] = old + increment / old;
    }
    sums[0] = static_cast<double>(b[0]);
  });
}

// WNGrad's move x <- x + scale (g / b). Arrays: grad, p. Constants: weight decay, scale.
// Tensor constants: the block's b (1 for global b, whose step size is in the scale).
template <typename T>
void wngrad_move(const Call& call) {
  const T decay = T(call.constants[0]), scale = T(call.constants[1]);
  const bool decayed = call.constants[0] != 0.0;
  lrlab::for_each_block<T, 2, 0>(call, [&](int64_t tensor, const lrlab::Arrays<T, 2>& a,
                                           int64_t n, double*) {
    T* __restrict grad = a[0];
    T* __restrict p = a[1];
    const T b = T(call.tensor_constants[tensor]);
    if (decayed) {
      lrlab::elementwise<T>(n, [&](int64_t i) { p[i] = p[i] + scale * ((grad[i] + decay * p[i]) / b); });
    } else {
      lrlab::elementwise<T>(n, [&](int64_t i) { p[i] = p[i] + scale * (grad[i] / b); });
    }
  });
}

// WN-Adam's move x <- x + scale (m / b). Arrays: p, m. Tensor constants: the block's b (1 for
// global b) and its scale (-lr / (1 - beta^t), with t counted per tensor).
template <typename T>
void wnadam_move(const Call& call) {
  lrlab::for_each_block<T, 2, 0>(call, [&](int64_t tensor, const lrlab::Arrays<T, 2>& a,
                                           int64_t n, double*) {
    T* __restrict p = a[0];
    T* __restrict m = a[1];
    const T b = T(call.tensor_constants[2 * tensor]), scale = T(call.tensor_constants[2 * tensor + 1]);
    lrlab::elementwise<T>(n, [&](int64_t i) { p[i] = p[i] + scale * (m[i] / b); });
  });
}

}  // namespace

LRLAB_EXPORT(wngrad_squares)
LRLAB_EXPORT(wnadam_moment)
LRLAB_EXPORT(wngrad_accumulate)
LRLAB_EXPORT(wngrad_move)
LRLAB_EXPORT(wnadam_move)
