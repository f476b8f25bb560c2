// Register-direct decode attention kernels for 3-bit K with 3- or 2-bit V (K group 32 / 64 / 128):
// the templates of decode_attention_rd.cu instantiated in a translation unit of their own
// (launch_decode_attention_rd_k<3>, decode_attention_rd.h), so the widths compile in parallel.
#define KVCAL_RD_K_BITS 3
#include "kernels/cuda/decode_attention_rd.cu"  // NOLINT(bugprone-suspicious-include)
