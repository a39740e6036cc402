/* AVX-VNNI kernels: the AVX2 ones with VEX-encoded vpdpwssd/vpdpbusd (Alder Lake+, Zen 5). */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,f16c,avxvnni")
#define VT_KERNELS vt_kernels_avxvnni
#define VT_VNNI 1
#include "kern_x86.h"
#endif
