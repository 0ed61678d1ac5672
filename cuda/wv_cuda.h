/* What the CUDA backend library exports to its Python module (cuda/module_cuda.c). */
#ifndef WV_CUDA_H
#define WV_CUDA_H

#include <stddef.h>

#include "wv_backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Convolution shapes (each with its cuDNN descriptors and plans) a context keeps past a call. A call
 * that begins with more forgets those its last call did not use: a Decoder kept for days and fed ever
 * new frame sizes (a ComfyUI server) holds what its recent decodes need, not every size it met. */
#define WV_CUDA_KEEP_SHAPES 256

/* CUDA graphs of steps (WANVIDEO_CUDA_GRAPHS=1) a context holds at once, the least recently used
 * destroyed first: a tile's steps cycle through 3 or 6 lists, then the next tile's begin. */
#define WV_CUDA_GRAPH_EXECS 16

/* The tables, by activation dtype. */
const wv_backend_set *wv_cuda_backends(void);

/* Devices visible now; 0 with the reason in `why` when none can be used. */
int wv_cuda_device_count(char *why, size_t why_size);

/* The calling thread's current device (0 when none was chosen). */
int wv_cuda_current_device(void);

/* Free and total bytes of device memory (device < 0: the current one); -1 with `why` on failure. */
int wv_cuda_mem_info(int device, size_t *free_b, size_t *total_b, char *why, size_t why_size);

/* What `python -m wanvideo_vae info` reports of a device. */
typedef struct {
    char name[256];
    int major, minor;    /* compute capability */
    int multiprocessors;
    size_t total_memory; /* bytes */
    int has_code;        /* whether this build has code the device runs; else code_missing says why, or
                            that it cannot tell (the device's context could not be made) */
    char code_missing[512];
} wv_cuda_device_info;

/* Device `device`'s properties, and whether this build runs there (asking that makes the device's
 * primary context, as a decode would); -1 with `why` when the device's properties cannot be read. */
int wv_cuda_device_info_get(int device, wv_cuda_device_info *out, char *why, size_t why_size);

/* The compute capabilities this build has code for, "7.5, 8.0, 8.6, 8.9, 9.0" into out ("" where nvcc
 * did not say: before CUDA 11.5); the newest also as PTX, which newer GPUs compile. */
void wv_cuda_built_archs(char *out, size_t size);

/* Versions of the CUDA runtime and driver (1000 x major + 10 x minor), cuDNN and cuBLAS. */
void wv_cuda_versions(int *runtime, int *driver, size_t *cudnn, int *cublas);

/* 0 where cuDNN can be called; else -1 and why: its graph sub-library cannot be loaded, which would
 * make cuDNN's first call abort the process. To be asked before any other cuDNN call. */
int wv_cuda_cudnn_loadable(char *why, size_t why_size);

#ifdef __cplusplus
}
#endif

#endif
