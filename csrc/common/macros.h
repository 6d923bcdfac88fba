// Host/device qualifiers so per-element routines compile for the CPU kernels,
// the CUDA kernels and the C++ tests alike.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DSE_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DSE_HOST_DEVICE inline
#endif
