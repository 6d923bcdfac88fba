// Fixed-order segmented reductions (host/device index arithmetic, tested on the CPU).
//
// A long sum over n items (points of a problem) is split into segments of `len`
// consecutive items: segment s covers [s * len, min(n, (s + 1) * len)). Each segment
// is summed sequentially in item order (on CUDA by one thread per output entry, to a
// workspace), then the segment sums are added in segment order starting from 0.0.
// The result depends only on n, len and the data, never on the launch geometry or on
// thread timing, so it is deterministic without any floating-point atomics, and with
// a single segment (n <= len) it is exactly the plain sequential sum.
#pragma once
#include <cstdint>

#include "common/macros.h"

namespace dse {

struct Segment {
  int64_t begin, end;  // [begin, end)
};

// Number of segments of `len` items covering n items: 0 for n <= 0.
DSE_HOST_DEVICE int64_t segment_count(int64_t n, int64_t len) { return n <= 0 ? 0 : (n + len - 1) / len; }

// Segment s of n items (0 <= s < segment_count(n, len)).
DSE_HOST_DEVICE Segment segment_bounds(int64_t s, int64_t n, int64_t len) {
  const int64_t begin = s * len, end = begin + len;
  return {begin, end < n ? end : n};
}

// Segment of item i.
DSE_HOST_DEVICE int64_t segment_of(int64_t i, int64_t len) { return i / len; }

}  // namespace dse
