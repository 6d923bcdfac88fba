// Counter-based random numbers for k-means++ seeding.
//
// Every draw is a pure function of (seed, stream, counter): the CPU and CUDA
// kernels, any thread count and the Python reference (dse_ext/_rng.py) get the
// same numbers, and torch's global RNG is never touched. The mixer is
// SplitMix64 (Steele, Lea & Flood 2014).
#pragma once
#include <cstdint>

#include "common/macros.h"

namespace dse {

DSE_HOST_DEVICE uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Uniform double in [0, 1) with 53 random bits.
DSE_HOST_DEVICE double uniform01(uint64_t seed, uint64_t stream, uint64_t counter) {
  const uint64_t h = splitmix64(splitmix64(splitmix64(seed) ^ stream) ^ counter);
  return static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0);  // 2^-53
}

}  // namespace dse
