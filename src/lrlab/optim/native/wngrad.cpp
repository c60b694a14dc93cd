// Native multi-tensor kernels of WNGrad and WN-Adam (lrlab/optim/wngrad.py): the arithmetic of
// the for-loop path, one call per pass for all CPU tensors of one dtype.
//
// Global b (one scalar for every tensor of every group): two passes, the tensors' sums of
// squares (WN-Adam also updates its momentum, which does not wait for b), then, once Python has
// the new b, the move with the step size in a per-tensor scalar.
// Per-tensor and per-row b: one call does the whole step (for_each_row below): the sums of every
// block of b, b itself, and the move with the new b. A block is a whole tensor or one row of it;
// b, the last array of a tensor, holds one element per block.
#include "driver.h"

// BEGIN lrlab schema: generated from the Python schemas by lrlab.optim._executor (do not edit)
struct WNGradSquaresScalars {
  double weight_decay;
  static constexpr int kCount = 1;
};
struct WNGradSquaresSums {
  enum : int { square, kCount };
};
struct WNGradMoveScalars {
  double weight_decay;
  static constexpr int kCount = 1;
};
struct WNGradMoveTensorScalars {
  double step;
  static constexpr int kCount = 1;
};
struct WNGradBlocksScalars {
  double weight_decay;
  static constexpr int kCount = 1;
};
struct WNGradBlocksTensorScalars {
  double blocks;
  double rate;
  double step;
  static constexpr int kCount = 3;
};
struct WNGradBlocksSums {
  enum : int { elements_over_b, kCount };
};
struct WNAdamMomentScalars {
  double weight_decay;
  double one_minus_beta;
  static constexpr int kCount = 2;
};
struct WNAdamMomentSums {
  enum : int { square, kCount };
};
struct WNAdamMoveScalars {
  static constexpr int kCount = 0;
};
struct WNAdamMoveTensorScalars {
  double step;
  static constexpr int kCount = 1;
};
struct WNAdamBlocksScalars {
  double weight_decay;
  double one_minus_beta;
  static constexpr int kCount = 2;
};
struct WNAdamBlocksTensorScalars {
  double blocks;
  double rate;
  double step;
  static constexpr int kCount = 3;
};
struct WNAdamBlocksSums {
  enum : int { elements_over_b, kCount };
};
// END lrlab schema

namespace {

using lrlab::Call;

// Rows: tensor t's first NARRAYS arrays hold n elements, read as rows(t) rows of n / rows(t)
// elements (one row: the whole tensor); its last array holds one value per row (WNGrad's b).
// Three steps in one call, for a per-row statistic that the same step uses:
//   sum(tensor, arrays, length, sums)          every piece of every row, in parallel;
//   finish(tensor, value, sums, width)         once per row, in order, with the row's NSUMS sums
//                                              (value: the row's element of the last array);
//   update(tensor, arrays, length, value)      every piece again, in parallel.
// The pieces are for_each_block's, cut from each row, and a row's sums are added piece by piece
// in order, so the result does not depend on the number of threads.
// (Here rather than in driver.h while WNGrad is its only user.)
template <typename T, int NARRAYS, int NSUMS, typename Rows, typename Sum, typename Finish,
          typename Update>
void for_each_row(const Call& call, Rows rows, Sum sum, Finish finish, Update update) {
  struct Piece {
    int64_t tensor, row, begin, length;
  };
  constexpr int kStride = NARRAYS + 1;
  std::vector<Piece> pieces;
  std::vector<int64_t> first_row(static_cast<size_t>(call.n_tensors), 0);
  int64_t total = 0, n_rows = 0;
  for (int64_t t = 0; t < call.n_tensors; ++t) {
    first_row[t] = n_rows;
    const int64_t count = rows(t);
    if (count <= 0) continue;  // an empty tensor whose b is empty too
    n_rows += count;
    total += call.sizes[t];
    const int64_t width = call.sizes[t] / count;
    for (int64_t r = 0; r < count; ++r) {
      for (int64_t begin = 0; begin < width; begin += lrlab::kBlock) {
        const int64_t rest = width - begin;
        pieces.push_back({t, r, r * width + begin, rest < lrlab::kBlock ? rest : lrlab::kBlock});
      }
    }
  }
  auto arrays_of = [&](const Piece& piece) {
    lrlab::Arrays<T, NARRAYS> arrays;
    for (int a = 0; a < NARRAYS; ++a) {
      arrays.data[a] = reinterpret_cast<T*>(call.pointers[piece.tensor * kStride + a]) + piece.begin;
    }
    return arrays;
  };
  auto values_of = [&](int64_t tensor) {
    return reinterpret_cast<T*>(call.pointers[tensor * kStride + NARRAYS]);
  };
  const int64_t n_pieces = static_cast<int64_t>(pieces.size());
  const int threads = total >= 2 * lrlab::kBlock && call.threads > 1 ? call.threads : 1;
  std::vector<double> partial(static_cast<size_t>(n_pieces * NSUMS), 0.0);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t i = 0; i < n_pieces; ++i) {
    const Piece& piece = pieces[i];
    double sums[NSUMS] = {0.0};
    sum(piece.tensor, arrays_of(piece), piece.length, sums);
    for (int k = 0; k < NSUMS; ++k) partial[i * NSUMS + k] = sums[k];
  }
  std::vector<double> row_sums(static_cast<size_t>(n_rows * NSUMS), 0.0);
  for (int64_t i = 0; i < n_pieces; ++i) {
    const int64_t row = first_row[pieces[i].tensor] + pieces[i].row;
    for (int k = 0; k < NSUMS; ++k) row_sums[row * NSUMS + k] += partial[i * NSUMS + k];
  }
  for (int64_t t = 0; t < call.n_tensors; ++t) {
    const int64_t count = rows(t);
    for (int64_t r = 0; r < count; ++r) {
      finish(t, values_of(t)[r], &row_sums[(first_row[t] + r) * NSUMS], call.sizes[t] / count);
    }
  }
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t i = 0; i < n_pieces; ++i) {
    const Piece& piece = pieces[i];
    update(piece.tensor, arrays_of(piece), piece.length, values_of(piece.tensor)[piece.row]);
  }
}

// The blocks of a block pass: the tensor scalar "blocks" of each tensor.
template <typename Own>
inline auto blocks_of(const Call& call) {
  return [&call](int64_t tensor) {
    return static_cast<int64_t>(lrlab::tensor_scalars<Own>(call, tensor).blocks);
  };
}

// b <- b + increment / b for a block, increment = rate ||g_block||^2 (rate = lr^2, or 0 for a
// tensor whose b stays b0; each piece's sum is scaled, see rated), and the tensor's sum over
// its elements of 1 / b (for effective_lr).
template <typename T, typename Own, typename Sums>
inline auto accumulate(const Call& call) {
  return [&call](int64_t tensor, T& b, const double* increment, int64_t width) {
    const T old = b;
    b = old + T(increment[0]) / old;
    call.sums[tensor * Sums::kCount + Sums::elements_over_b] +=
        static_cast<double>(width) / static_cast<double>(b);
  };
}

// A piece's sum of squares times the tensor's rate (scaled per piece, as the kernels always
// have: the same b to the last bit).
template <typename Own>
inline double rated(const Call& call, int64_t tensor, double squares) {
  return squares * lrlab::tensor_scalars<Own>(call, tensor).rate;
}

// ||g||^2 with g = grad + wd p (without decay the loop path uses the gradient itself, not
// g + 0 p, which differs for a non-finite p, and the kernel need not read p at all).
template <typename T>
LRLAB_INLINE void add_squares(const T* __restrict grad, const T* __restrict p, T decay,
                              bool decayed, int64_t n, double* sums) {
  if (decayed) {
    lrlab::elementwise_sum1<T>(n, sums, [&](int64_t i, T& square) {
      const T g = grad[i] + decay * p[i];
      square += g * g;
    });
  } else {
    lrlab::elementwise_sum1<T>(n, sums, [&](int64_t i, T& square) { square += grad[i] * grad[i]; });
  }
}

// x <- x + step (g / b) with g = grad + wd p (b = 1 for the global b: its step size is in step).
template <typename T>
LRLAB_INLINE void wngrad_update(const T* __restrict grad, T* __restrict p, T decay, bool decayed,
                                T step, T b, int64_t n) {
  if (decayed) {
    lrlab::elementwise<T>(n, [&](int64_t i) { p[i] = p[i] + step * ((grad[i] + decay * p[i]) / b); });
  } else {
    lrlab::elementwise<T>(n, [&](int64_t i) { p[i] = p[i] + step * (grad[i] / b); });
  }
}

// WN-Adam's momentum m <- lerp(m, g, 1 - beta) and ||g||^2, g = grad + wd p.
template <typename T>
LRLAB_INLINE void momentum_and_squares(const T* __restrict grad, const T* __restrict p,
                                       T* __restrict m, T decay, bool decayed, T weight,
                                       int64_t n, double* sums) {
  const T complement = T(1) - weight;
  // torch.lerp's two formulas, chosen by the weight as torch does; the branches outside the
  // loops: one straight-line loop body each vectorises
  const bool small_weight = std::fabs(weight) < T(0.5);
  auto run = [&](auto gradient, auto lerp) {
    lrlab::elementwise_sum1<T>(n, sums, [&](int64_t i, T& square) {
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
}

// WNGrad, global b, first pass. Arrays: grad, p. Sums: ||g||^2.
template <typename T>
void wngrad_squares(const Call& call) {
  const auto c = lrlab::scalars<WNGradSquaresScalars>(call);
  lrlab::for_each_block<T, 2, 1>(call, [&](int64_t, const lrlab::Arrays<T, 2>& a, int64_t n,
                                           double* sums) {
    add_squares<T>(a[0], a[1], T(c.weight_decay), c.weight_decay != 0.0, n, sums);
  });
}

// WNGrad, global b, the move x <- x + step g. Arrays: grad, p.
template <typename T>
void wngrad_move(const Call& call) {
  const auto c = lrlab::scalars<WNGradMoveScalars>(call);
  lrlab::for_each_block<T, 2, 0>(call, [&](int64_t tensor, const lrlab::Arrays<T, 2>& a,
                                           int64_t n, double*) {
    const T step = T(lrlab::tensor_scalars<WNGradMoveTensorScalars>(call, tensor).step);
    wngrad_update<T>(a[0], a[1], T(c.weight_decay), c.weight_decay != 0.0, step, T(1), n);
  });
}

// WNGrad, per-tensor or per-row b: the whole step. Arrays: grad, p, b.
template <typename T>
void wngrad_blocks(const Call& call) {
  using Own = WNGradBlocksTensorScalars;
  const auto c = lrlab::scalars<WNGradBlocksScalars>(call);
  const T decay = T(c.weight_decay);
  const bool decayed = c.weight_decay != 0.0;
  for_each_row<T, 2, 1>(
      call, blocks_of<Own>(call),
      [&](int64_t tensor, const lrlab::Arrays<T, 2>& a, int64_t n, double* sums) {
        double squares[1] = {0.0};
        add_squares<T>(a[0], a[1], decay, decayed, n, squares);
        sums[0] = rated<Own>(call, tensor, squares[0]);
      },
      accumulate<T, Own, WNGradBlocksSums>(call),
      [&](int64_t tensor, const lrlab::Arrays<T, 2>& a, int64_t n, T b) {
        const T step = T(lrlab::tensor_scalars<Own>(call, tensor).step);
        wngrad_update<T>(a[0], a[1], decay, decayed, step, b, n);
      });
}

// WN-Adam, global b, first pass: the momentum (it does not wait for b) and ||g||^2.
// Arrays: grad, p, m.
template <typename T>
void wnadam_moment(const Call& call) {
  const auto c = lrlab::scalars<WNAdamMomentScalars>(call);
  lrlab::for_each_block<T, 3, 1>(call, [&](int64_t, const lrlab::Arrays<T, 3>& a, int64_t n,
                                           double* sums) {
    momentum_and_squares<T>(a[0], a[1], a[2], T(c.weight_decay), c.weight_decay != 0.0,
                            T(c.one_minus_beta), n, sums);
  });
}

// WN-Adam, global b, the move x <- x + step m (step = -lr / (b (1 - beta^t)), t counted per
// tensor). Arrays: p, m.
template <typename T>
void wnadam_move(const Call& call) {
  lrlab::for_each_block<T, 2, 0>(call, [&](int64_t tensor, const lrlab::Arrays<T, 2>& a,
                                           int64_t n, double*) {
    T* __restrict p = a[0];
    T* __restrict m = a[1];
    const T step = T(lrlab::tensor_scalars<WNAdamMoveTensorScalars>(call, tensor).step);
    lrlab::elementwise<T>(n, [&](int64_t i) { p[i] = p[i] + step * m[i]; });
  });
}

// WN-Adam, per-tensor or per-row b: the whole step. Arrays: grad, p, m, b.
template <typename T>
void wnadam_blocks(const Call& call) {
  using Own = WNAdamBlocksTensorScalars;
  const auto c = lrlab::scalars<WNAdamBlocksScalars>(call);
  const T decay = T(c.weight_decay), weight = T(c.one_minus_beta);
  const bool decayed = c.weight_decay != 0.0;
  for_each_row<T, 3, 1>(
      call, blocks_of<Own>(call),
      [&](int64_t tensor, const lrlab::Arrays<T, 3>& a, int64_t n, double* sums) {
        double squares[1] = {0.0};
        momentum_and_squares<T>(a[0], a[1], a[2], decay, decayed, weight, n, squares);
        sums[0] = rated<Own>(call, tensor, squares[0]);
      },
      accumulate<T, Own, WNAdamBlocksSums>(call),
      [&](int64_t tensor, const lrlab::Arrays<T, 3>& a, int64_t n, T b) {
        T* __restrict p = a[1];
        T* __restrict m = a[2];
        const T step = T(lrlab::tensor_scalars<Own>(call, tensor).step);
        lrlab::elementwise<T>(n, [&](int64_t i) { p[i] = p[i] + step * (m[i] / b); });
      });
}

}  // namespace

LRLAB_EXPORT(wngrad_squares)
LRLAB_EXPORT(wngrad_move)
LRLAB_EXPORT(wngrad_blocks)
LRLAB_EXPORT(wnadam_moment)
LRLAB_EXPORT(wnadam_move)
LRLAB_EXPORT(wnadam_blocks)
