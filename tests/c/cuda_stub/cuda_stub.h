/* The stand-in CUDA runtime's report (cuda_stub.cpp). */
#ifndef CUDA_STUB_H
#define CUDA_STUB_H

#ifdef __cplusplus
extern "C" {
#endif

#include <stddef.h>

/* The next device allocation of arena_bytes is a decode's arena with these n buffers: from then on,
 * each range the backend touches there must lie inside one of them. */
void stub_arena_layout(size_t arena_bytes, int n, const size_t *offsets, const size_t *sizes);

/* Prints what is wrong (accesses outside every allocation, allocations or handles still live) and
 * returns nonzero if anything is. */
int stub_report(void);

#ifdef __cplusplus
}
#endif

#endif
