/* AVX2 kernels (with F16C for fp16 weights). */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,f16c")
#define VT_KERNELS vt_kernels_avx2
#define VT_VNNI 0
#include "kern_x86.h"
#endif
