// Native multi-tensor kernels of DoG, L-DoG and DoWG (lrlab/optim/dog.py): the same arithmetic
// as the compiled kernels there, one call for all CPU tensors of one dtype. (The LDogStep
// structs below are the compiled-only passes' schemas: L-DoG's native step is dog_sums and
// dog_move around vector math in Python.)
#include "driver.h"

// BEGIN lrlab schema: generated from the Python schemas by lrlab.optim._executor (do not edit)
struct DogSumsScalars {
  double weight_decay;
  double anchor;
  static constexpr int kCount = 2;
};
struct DogSumsSums {
  enum : int { distance, gradient, kCount };
};
struct DogDistanceScalars {
  double anchor;
  static constexpr int kCount = 1;
};
struct DogDistanceSums {
  enum : int { distance, kCount };
};
struct DogMoveScalars {
  double weight_decay;
  static constexpr int kCount = 1;
};
struct DogMoveTensorScalars {
  double eta;
  static constexpr int kCount = 1;
};
struct DogMoveAverageScalars {
  double weight_decay;
  static constexpr int kCount = 1;
};
struct DogMoveAverageTensorScalars {
  double eta;
  double weight;
  static constexpr int kCount = 2;
};
struct LDogStepScalars {
  double weight_decay;
  double lr;
  double init_eta;
  double has_init_eta;
  static constexpr int kCount = 4;
};
struct LDogStepAverageScalars {
  double weight_decay;
  double lr;
  double init_eta;
  double has_init_eta;
  static constexpr int kCount = 4;
};
struct LDogStepAverageTensorScalars {
  double weight;
  static constexpr int kCount = 1;
};
// END lrlab schema

namespace {

using lrlab::Call;

// The statistics pass of DoG, L-DoG and DoWG. Arrays: grad, p, x0. Scalars: DogSums (anchor 0
// gives DoG's first radius ||x||^2, 1 the distance ||x - x0||^2). Sums: DogSums (distance:
// ||x - anchor x0||^2, gradient: ||g + wd x||^2).
template <typename T>
void dog_sums(const Call& call) {
  using Sums = DogSumsSums;
  static_assert(Sums::distance == 0 && Sums::gradient == 1, "elementwise_sum2 fills in order");
  const auto c = lrlab::scalars<DogSumsScalars>(call);
  const T decay = T(c.weight_decay), anchor = T(c.anchor);
  lrlab::for_each_block<T, 3, Sums::kCount>(call, [&](int64_t, const lrlab::Arrays<T, 3>& a,
                                                      int64_t n, double* sums) {
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
// the gradient sum). Arrays: p, x0. Scalars: DogDistance (anchor as in dog_sums). Sums:
// DogDistance (distance: ||x - anchor x0||^2).
template <typename T>
void dog_distance(const Call& call) {
  using Sums = DogDistanceSums;
  static_assert(Sums::distance == 0, "elementwise_sum1 fills the first sum");
  const T anchor = T(lrlab::scalars<DogDistanceScalars>(call).anchor);
  lrlab::for_each_block<T, 2, Sums::kCount>(call, [&](int64_t, const lrlab::Arrays<T, 2>& a,
                                                      int64_t n, double* sums) {
    T* __restrict p = a[0];
    T* __restrict x0 = a[1];
    lrlab::elementwise_sum1<T>(n, sums, [&](int64_t i, T& distance) {
      const T difference = p[i] - anchor * x0[i];
      distance += difference * difference;
    });
  });
}

// The move x <- x - eta (g + wd x). Arrays: grad, p. Scalars: DogMove (eta per tensor: DoG's
// and DoWG's the group's, L-DoG's the tensor's). x + (-eta) d and x - d eta, the compiled
// kernels' two spellings, are the same IEEE value.
template <typename T>
void dog_move(const Call& call) {
  const T decay = T(lrlab::scalars<DogMoveScalars>(call).weight_decay);
  lrlab::for_each_block<T, 2, 0>(call, [&](int64_t tensor, const lrlab::Arrays<T, 2>& a,
                                           int64_t n, double*) {
    const T eta = T(lrlab::tensor_scalars<DogMoveTensorScalars>(call, tensor).eta);
    T* __restrict grad = a[0];
    T* __restrict p = a[1];
    lrlab::elementwise<T>(n, [&](int64_t i) { p[i] = p[i] - eta * (grad[i] + decay * p[i]); });
  });
}

// The move and the polynomial-decay average of the moved x, with torch.lerp's formula (exact
// at weight 0 and 1; a new average has weight 1 and is the moved x). Arrays: grad, p, average.
// Scalars: DogMoveAverage (per tensor: eta, the average's weight).
template <typename T>
void dog_move_average(const Call& call) {
  const T decay = T(lrlab::scalars<DogMoveAverageScalars>(call).weight_decay);
  lrlab::for_each_block<T, 3, 0>(call, [&](int64_t tensor, const lrlab::Arrays<T, 3>& a,
                                           int64_t n, double*) {
    const auto own = lrlab::tensor_scalars<DogMoveAverageTensorScalars>(call, tensor);
    const T eta = T(own.eta), weight = T(own.weight);
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
