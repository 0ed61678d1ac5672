/* What the CUDA backend library exports to its Python module (cuda/module_cuda.c). */
#ifndef WV_CUDA_H
#define WV_CUDA_H

#include <stddef.h>

#include "wv_backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The tables, by activation dtype. */
const wv_backend_set *wv_cuda_backends(void);

/* Devices visible now; 0 with the reason in `why` when none can be used. */
int wv_cuda_device_count(char *why, size_t why_size);

/* The calling thread's current device (0 when none was chosen). */
int wv_cuda_current_device(void);

/* Free and total bytes of device memory (device < 0: the current one); -1 with `why` on failure. */
int wv_cuda_mem_info(int device, size_t *free_b, size_t *total_b, char *why, size_t why_size);

/* Versions of the CUDA runtime and driver (1000 x major + 10 x minor), cuDNN and cuBLAS. */
void wv_cuda_versions(int *runtime, int *driver, size_t *cudnn, int *cublas);

#ifdef __cplusplus
}
#endif

#endif
