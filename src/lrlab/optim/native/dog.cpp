// Native multi-tensor kernels of DoG, L-DoG and DoWG (lrlab/optim/dog.py): the same arithmetic
// as the compiled kernels there, one call for all CPU tensors of one dtype.
#include "driver.h"

namespace {

using lrlab::Call;

// The statistics pass of DoG, L-DoG and DoWG. Arrays: grad, p, x0. Constants: weight decay, a
// (0 gives DoG's first radius ||x||^2, 1 the distance ||x - x0||^2). Sums: ||x - a x0||^2,
// ||g + wd x||^2.
template <typename T>
void dog_sums(const Call& call) {
  const T decay = T(call.constants[0]), anchor = T(call.constants[1]);
  lrlab::for_each_block<T, 3, 2>(call, [&](int64_t, const lrlab::Arrays<T, 3>& a, int64_t n,
                                           double* sums) {
    T* __restrict grad = a[0];
    T* __restrict p = a[1];
    T* __restrict x0 = a[2];
    lrlab::elementwise_sum2<T>(n, sums, [&](int64_t i, T& distance, T& gradient) {
      const T difference = p[i] - anchor * x0[i];
      const T direction = grad[i] + decay * p[i];
      distance += difference * difference;
      gradient += direction * direction;
    });
  });
}

// The distance of a tensor without a gradient (DoG, DoWG: it counts in the distance, not in
// the gradient sum). Arrays: p, x0. Constants: a as in dog_sums. Sums: ||x - a x0||^2.
template <typename T>
void dog_distance(const Call& call) {
  const T anchor = T(call.constants[0]);
  lrlab::for_each_block<T, 2, 1>(call, [&](int64_t, const lrlab::Arrays<T, 2>& a, int64_t n,
                                           double* sums) {
    T* __restrict p = a[0];
    T* __restrict x0 = a[1];
    lrlab::elementwise_sum1<T>(n, sums, [&](int64_t i, T& distance) {
      const T difference = p[i] - anchor * x0[i];
      distance += difference * difference;
    });
  });
}

// The move x <- x - eta (g + wd x). Arrays: grad, p. Constants: weight decay. Tensor constants:
// eta (DoG, DoWG: the group's; L-DoG: the tensor's). x + (-eta) d and x - d eta, the compiled
// kernels' two spellings, are the same IEEE value.
template <typename T>
void dog_move(const Call& call) {
  const T decay = T(call.constants[0]);
  lrlab::for_each_block<T, 2, 0>(call, [&](int64_t tensor, const lrlab::Arrays<T, 2>& a,
                                           int64_t n, double*) {
    const T eta = T(call.tensor_constants[tensor]);
    T* __restrict grad = a[0];
    T* __restrict p = a[1];
    lrlab::elementwise<T>(n, [&](int64_t i) { p[i] = p[i] - eta * (grad[i] + decay * p[i]); });
  });
}

// The move and the polynomial-decay average of the moved x, with torch.lerp's formula (exact
// at weight 0 and 1; a new average has weight 1 and is the moved x). Arrays: grad, p, average.
// Constants: weight decay. Tensor constants: eta, the average's weight.
template <typename T>
void dog_move_average(const Call& call) {
  const T decay = T(call.constants[0]);
  lrlab::for_each_block<T, 3, 0>(call, [&](int64_t tensor, const lrlab::Arrays<T, 3>& a,
                                           int64_t n, double*) {
    const T eta = T(call.tensor_constants[2 * tensor]);
    const T weight = T(call.tensor_constants[2 * tensor + 1]);
    T* __restrict grad = a[0];
    T* __restrict p = a[1];
    T* __restrict average = a[2];
    if (std::fabs(weight) < T(0.5)) {
      lrlab::elementwise<T>(n, [&](int64_t i) {
        const T moved = p[i] - eta * (grad[i] + decay * p[i]);
        p[i] = moved;
        average[i] = average[i] + weight * (moved - average[i]);
      });
    } else {
      const T rest = T(1) - weight;
      lrlab::elementwise<T>(n, [&](int64_t i) {
        const T moved = p[i] - eta * (grad[i] + decay * p[i]);
        p[i] = moved;
        average[i] = moved - (moved - average[i]) * rest;
      });
    }
  });
}

}  // namespace

LRLAB_EXPORT(dog_sums)
LRLAB_EXPORT(dog_distance)
LRLAB_EXPORT(dog_move)
LRLAB_EXPORT(dog_move_average)
