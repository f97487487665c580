// A persistent worker pool for the CPU kernels: starting threads per call costs more than a
// short sequence's whole recurrence. The pool is separate from torch's, so callers keep
// parallel regions coarse (one item = one batch tile over the whole sequence).
#pragma once
#include <cstdint>
#include <functional>

namespace gf {

// Runs fn(i) for every i in [0, n) on up to `threads` threads (the caller included), and
// rethrows the first exception. Nested or concurrent calls run serially on the caller.
void parallel_for(int64_t n, int threads, const std::function<void(int64_t)>& fn);

// Hardware threads available to the kernels.
int hardware_threads();

}  // namespace gf
