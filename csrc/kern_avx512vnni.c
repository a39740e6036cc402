/* AVX512-VNNI kernels: 512-bit K-quant loop (AVX512BW maddubs + vpdpwssd). */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
#define VT_KERNELS vt_kernels_avx512vnni
#define VT_VNNI 2
#include "kern_x86.h"
#endif
