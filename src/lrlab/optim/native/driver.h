// Multi-tensor driver of lrlab's native kernels (see lrlab/optim/_native.py).
//
// A kernel is called once per step (or pass) for every tensor of one dtype on the CPU:
//
//   void NAME_f32(int64_t n_tensors, const int64_t* pointers, const int64_t* sizes,
//                 const double* constants, const double* tensor_constants, double* sums,
//                 int threads)
//
// `pointers` holds each tensor's arrays (gradient, parameter, state...) row by row, `sizes`
// the element count of each tensor, `constants` the step's scalars, `tensor_constants` one row
// of scalars per tensor (may be null), and `sums` receives one row of per-tensor sums.
//
// Why this shape: the work is memory-bound, so a kernel must touch each array once per pass
// and do its reductions in the same loop as the elementwise update. Tensors are cut into
// blocks of a fixed size that the threads share, and the sums of a tensor are added block by
// block in a fixed order, so the result does not depend on the number of threads
// (bit-for-bit determinism on CPU).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

// Block bodies and the elementwise helpers must be inlined into one function: a lambda left as
// an out-of-line call loses the __restrict of the arrays it captures, and gcc then stops
// vectorising or re-checks aliasing per element (2-3x slower kernels, measured)
// Kernels capture the arrays and constants by value ([=]): captured by reference, gcc 12 built
// some sum loops from gather instructions with the totals on the stack (D-Adaptation's kernels:
// 17 gathers, DAdaptAdaGrad's step 2.56x -> 2.33x Adam(fused) when fixed).
#define LRLAB_INLINE inline __attribute__((always_inline, flatten))
// For block bodies (lambdas): gcc once left a body's elementwise loop a separate function, where
// the arrays lost their __restrict and the loop ran at half speed or less
#define LRLAB_FLATTEN __attribute__((flatten))

namespace lrlab {

// elements per parallel work item: large enough that scheduling costs nothing, small enough
// that 200 tensors of mixed sizes balance over the threads
constexpr int64_t kBlock = 32768;
// elements per single-precision partial sum: short runs keep float32 accumulation as accurate
// as torch's (cascade) sums; the runs are then added in double
constexpr int64_t kChunk = 1024;

struct Call {
  int64_t n_tensors;
  const int64_t* pointers;
  const int64_t* sizes;
  const double* constants;
  const double* tensor_constants;
  double* sums;
  int threads;
};

struct Block {
  int64_t tensor;
  int64_t begin;
  int64_t length;
};

// The arrays of one tensor, offset to the start of a block.
template <typename T, int NARRAYS>
struct Arrays {
  T* data[NARRAYS];
  T* __restrict operator[](int index) const { return data[index]; }
};

// A call's scalars as the struct that lrlab/optim/_executor.py generates from the Python
// schema (between the "lrlab schema" markers of a family's source): fields by name, no index
// to keep in sync. Copied, not cast, so that no aliasing rule is bent.
template <typename S>
inline S scalars(const Call& call) {
  static_assert(sizeof(S) == S::kCount * sizeof(double), "a schema struct holds doubles only");
  S values;
  std::memcpy(&values, call.constants, sizeof(S));
  return values;
}

// One tensor's row of per-tensor scalars, as the generated struct.
template <typename S>
inline S tensor_scalars(const Call& call, int64_t tensor) {
  static_assert(sizeof(S) == S::kCount * sizeof(double), "a schema struct holds doubles only");
  S values;
  std::memcpy(&values, call.tensor_constants + tensor * S::kCount, sizeof(S));
  return values;
}

// Run body(tensor, arrays, length, sums) over every block; sums (NSUMS doubles per tensor) are
// summed over a tensor's blocks in block order.
template <typename T, int NARRAYS, int NSUMS, typename Body>
void for_each_block(const Call& call, Body body) {
  std::vector<Block> blocks;
  int64_t total = 0;
  for (int64_t t = 0; t < call.n_tensors; ++t) {
    total += call.sizes[t];
    for (int64_t begin = 0; begin < call.sizes[t]; begin += kBlock) {
      const int64_t rest = call.sizes[t] - begin;
      blocks.push_back({t, begin, rest < kBlock ? rest : kBlock});
    }
  }
  const int64_t n_blocks = static_cast<int64_t>(blocks.size());
  std::vector<double> partial(static_cast<size_t>(n_blocks * (NSUMS > 0 ? NSUMS : 1)), 0.0);
  const int threads = total >= 2 * kBlock && call.threads > 1 ? call.threads : 1;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t b = 0; b < n_blocks; ++b) {
    const Block& block = blocks[b];
    Arrays<T, NARRAYS> arrays;
    for (int a = 0; a < NARRAYS; ++a) {
      arrays.data[a] =
          reinterpret_cast<T*>(call.pointers[block.tensor * NARRAYS + a]) + block.begin;
    }
    double sums[NSUMS > 0 ? NSUMS : 1] = {0.0};
    body(block.tensor, arrays, block.length, sums);
    for (int k = 0; k < NSUMS; ++k) partial[b * NSUMS + k] = sums[k];
  }
  if (NSUMS > 0 && call.sums != nullptr) {
    for (int64_t i = 0; i < call.n_tensors * NSUMS; ++i) call.sums[i] = 0.0;
    for (int64_t b = 0; b < n_blocks; ++b) {
      for (int k = 0; k < NSUMS; ++k) call.sums[blocks[b].tensor * NSUMS + k] += partial[b * NSUMS + k];
    }
  }
}

// Elementwise loops with up to four sums. `element(i, s0, ...)` updates element i and adds to
// the sums; runs of kChunk elements accumulate in T (vectorised), then in double.
template <typename T, typename Element>
LRLAB_INLINE void elementwise(int64_t length, Element element) {
#pragma omp simd
  for (int64_t i = 0; i < length; ++i) element(i);
}

template <typename T, typename Element>
LRLAB_INLINE void elementwise_sum1(int64_t length, double* sums, Element element) {
  for (int64_t c = 0; c < length; c += kChunk) {
    const int64_t end = c + kChunk < length ? c + kChunk : length;
    T s0 = 0;
#pragma omp simd reduction(+ : s0)
    for (int64_t i = c; i < end; ++i) element(i, s0);
    sums[0] += s0;
  }
}

template <typename T, typename Element>
LRLAB_INLINE void elementwise_sum2(int64_t length, double* sums, Element element) {
  for (int64_t c = 0; c < length; c += kChunk) {
    const int64_t end = c + kChunk < length ? c + kChunk : length;
    T s0 = 0, s1 = 0;
#pragma omp simd reduction(+ : s0, s1)
    for (int64_t i = c; i < end; ++i) element(i, s0, s1);
    sums[0] += s0;
    sums[1] += s1;
  }
}

template <typename T, typename Element>
LRLAB_INLINE void elementwise_sum3(int64_t length, double* sums, Element element) {
  for (int64_t c = 0; c < length; c += kChunk) {
    const int64_t end = c + kChunk < length ? c + kChunk : length;
    T s0 = 0, s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s0, s1, s2)
    for (int64_t i = c; i < end; ++i) element(i, s0, s1, s2);
    sums[0] += s0;
    sums[1] += s1;
    sums[2] += s2;
  }
}

template <typename T, typename Element>
LRLAB_INLINE void elementwise_sum4(int64_t length, double* sums, Element element) {
  for (int64_t c = 0; c < length; c += kChunk) {
    const int64_t end = c + kChunk < length ? c + kChunk : length;
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t i = c; i < end; ++i) element(i, s0, s1, s2, s3);
    sums[0] += s0;
    sums[1] += s1;
    sums[2] += s2;
    sums[3] += s3;
  }
}

// torch's lerp (aten/native/Lerp.h): start + w (end - start) for |w| < 0.5, else
// end - (end - start)(1 - w), which keeps lerp(a, b, 1) == b exactly. The form is a template
// argument, not a test per element, so that the loops vectorise (see with_flag).
template <bool SmallWeight, typename T>
LRLAB_INLINE T lerp(T start, T end, T weight) {
  if constexpr (SmallWeight) {
    return start + weight * (end - start);
  } else {
    return end - (end - start) * (T(1) - weight);
  }
}

// body(std::true_type{}) or body(std::false_type{}): a run-time setting as a compile-time
// constant, so that the loop holds no branch and vectorises
template <typename Body>
inline void with_flag(bool flag, Body body) {
  if (flag) {
    body(std::true_type{});
  } else {
    body(std::false_type{});
  }
}

}  // namespace lrlab

// Declares NAME_f32 and NAME_f64 for a template `NAME<T>(const lrlab::Call&)`.
#define LRLAB_EXPORT(NAME)                                                                     \
  extern "C" void NAME##_f32(int64_t n, const int64_t* pointers, const int64_t* sizes,         \
                             const double* constants, const double* tensor_constants,          \
                             double* sums, int threads) {                                      \
    NAME<float>(lrlab::Call{n, pointers, sizes, constants, tensor_constants, sums, threads});  \
  }                                                                                            \
  extern "C" void NAME##_f64(int64_t n, const int64_t* pointers, const int64_t* sizes,         \
                             const double* constants, const double* tensor_constants,          \
                             double* sums, int threads) {                                      \
    NAME<double>(lrlab::Call{n, pointers, sizes, constants, tensor_constants, sums, threads}); \
  }
