// Native kernels shared by every method (see lrlab/optim/_native.py).
#include "driver.h"

namespace {

using lrlab::Call;

// The non-finite guard of every step (lrlab/optim/_base.py). Arrays: grad. Sum: sum(g * g),
// squared in the tensor's dtype: NaN or inf when an entry is, and inf when a square overflows
// (a gradient that would put inf into every second moment). The caller casts the sums back to
// the dtype, so a total that only overflows across runs counts as overflow too.
template <typename T>
void nonfinite_probe(const Call& call) {
  lrlab::for_each_block<T, 1, 1>(call, [&](int64_t, const lrlab::Arrays<T, 1>& a, int64_t n,
                                           double* sums) {
    const T* __restrict grad = a[0];
    lrlab::elementwise_sum1<T>(n, sums, [&](int64_t i, T& probe) { probe += grad[i] * grad[i]; });
  });
}

}  // namespace

LRLAB_EXPORT(nonfinite_probe)
