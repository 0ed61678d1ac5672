/* The stand-in CUDA runtime's report (cuda_stub.cpp). */
#ifndef CUDA_STUB_H
#define CUDA_STUB_H

#ifdef __cplusplus
extern "C" {
#endif

#include <stddef.h>
#include <stdint.h>

/* The next device allocation of arena_bytes is a decode's arena with these n buffers: from then on,
 * each range the backend touches there must lie inside one of them. */
void stub_arena_layout(size_t arena_bytes, int n, const size_t *offsets, const size_t *sizes);

/* Calls the host made outside graph capture (captured ones run in the graph launches), and the
 * seconds the stub spent in the device's place: moving bytes (copies, memsets) and taking or giving
 * back device memory (here host memory, each page faulted in as it is first touched).
 * spinning_waits: the host's waits for the device that would keep a CPU core busy (under the
 * runtime's default scheduling): cudaStreamSynchronize, and cudaEventSynchronize on an event made
 * without cudaEventBlockingSync. */
typedef struct {
    long kernels, convolutions, gemms, copies, graph_launches; /* copies: memcpy and memset */
    long graph_captures; /* CUDA graphs instantiated (a step graph captured) */
    long plan_runs;      /* the convolutions run by a plan of cuDNN's graph API (cudnnBackendExecute) */
    long bias_plan_runs; /* those of them whose plan added a bias */
    long wide_plan_runs; /* those of them by the heuristics' first engine that suits (stub_cudnn_plan_workspace's) */
    long spinning_waits;
    double device_seconds;
} stub_calls;

stub_calls stub_counts(void);

/* cuDNN convolution descriptors live now (the backend makes one per convolution shape it keeps). */
long stub_live_convolution_descriptors(void);
/* ... made so far (a shape described anew makes one); cuDNN graph-API descriptors live now. */
long stub_convolution_descriptors_made(void);
long stub_live_backend_descriptors(void);
/* The most CUDA graph executables live at once since the last call (then: those live now). */
long stub_graph_execs_most(void);

/* Devices: n of them from now on (1 at the start), none of their primary contexts made yet.
 * stub_context_made: whether device's primary context has been made since (by cudaSetDevice, or
 * by a call that needed a context with none current: the current device's, 0 in a fresh thread).
 * stub_current_context: the device whose context is current in the calling thread, -1: none. */
void stub_set_device_count(int n);
/* The CUDA version the driver supports, as cudaDriverGetVersion says (13000 at first, as the
 * runtime; 0: no driver); below the runtime's, cudaGetDeviceCount fails as on such a machine. */
void stub_set_driver_version(int v);
/* The GPU's compute capability (9.0 at first), and whether the module has code it runs: where not,
 * cudaFuncGetAttributes fails with cudaErrorNoKernelImageForDevice, as for a GPU older than a build's
 * archs; -1: it fails with cudaErrorMemoryAllocation, as where the device's context cannot be made
 * (the GPU full, or another process holding it in exclusive mode). */
void stub_set_gpu(int major, int minor, int has_kernel_image);
/* cudaSetDevice(device) fails from now on (cudaErrorDevicesUnavailable), making no context current, as
 * for a GPU another process holds in exclusive-process mode (CUDA 12 on makes the context there);
 * -1: none fails. */
void stub_refuse_context(int device);
int stub_context_made(int device);
int stub_current_context(void);
/* A non-primary context on device made current in the calling thread, as the driver API (pycuda, a
 * host of its own) may leave one: the runtime's calls then work in it, where memory of the primary
 * context cannot be used. stub_foreign_context_current: its device while it is current, -1: not;
 * stub_foreign_context_uses: the calls so far that needed a context while one was current. */
void stub_make_foreign_context_current(int device);
int stub_foreign_context_current(void);
int stub_foreign_context_uses(void);

/* Bytes of device memory (cudaMalloc) allocated now, read without the runtime (whose calls fail once the
 * context is lost). Bytes of pinned host memory (cudaHostAlloc) allocated now. stub_fail_nth_host_alloc:
 * the n-th cudaHostAlloc from now fails as out of memory (0: none; -1: every one), as where the system will
 * not pin that much; returns how many were still to go before it (0: the last one asked for has failed). */
size_t stub_device_bytes(void);
size_t stub_pinned_bytes(void);
int stub_fail_nth_host_alloc(int n);

/* The next n cuDNN convolution calls (plain or bias-fused) return status (a cudnnStatus_t) and do
 * nothing, as when cuDNN declines a candidate for this shape or workspace (0: none; -1: every one from
 * now). Returns how many were still to go. */
int stub_cudnn_decline(int status, int n);

/* The declines stub_cudnn_decline arms begin after skip more convolution calls (0: at the next). */
void stub_cudnn_decline_after(long skip);

/* From now on (on: 1) the declines stub_cudnn_decline arms are of calls into a stream being captured
 * only: a call declined in a capture runs when made again outside it (0: calls into any stream). */
void stub_cudnn_decline_captured_only(int on);

/* Each declined call from now leaves a failed launch (cudaErrorLaunchOutOfResources) as the runtime's
 * last error, as an engine of cuDNN's whose kernel did not launch may (0: none). */
void stub_cudnn_decline_leaves_launch_error(int on);

/* The bias-fused convolution is short of workspace (CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT) in
 * less than bytes, where the plain one runs, as cuDNN's fused kernels may need more (0: never). */
void stub_cudnn_fused_workspace(size_t bytes);

/* cudnnGetConvolutionForwardAlgorithm_v7 returns status (a cudnnStatus_t; 0: it ranks as before), as
 * a cuDNN whose convolution sub-library is missing does, or one refusing a shape. */
void stub_cudnn_heuristics_status(int status);

/* From now on the graph API's heuristics offer a graph of more than the convolution (its bias add) only
 * the engine that compiles kernels at run time, as cuDNN does where no pre-compiled engine takes the
 * fusion (0: every engine, as for the convolution alone). */
void stub_cudnn_fusions_compile(int on);

/* From now on the plan of the graph API's first engine on the tensor cores needs bytes of workspace,
 * where the next one's needs none (0: none for either). */
void stub_cudnn_plan_workspace(int64_t bytes);

/* Faults of the runtime, each armed for the n-th event from now (0: none), with `error` a cudaError_t;
 * each returns how many were still to go before it (0: the last one asked for has happened).
 * stub_fail_nth_launch: the n-th kernel launch (counting only launches into a stream being captured
 * where captured_only) is refused: nothing runs, and cudaGetLastError reports error, as for a launch
 * out of resources. stub_fault_nth_kernel: the n-th kernel launch (any) faults as it runs, as on an
 * illegal address: the launch works, and from then on every host wait for the device
 * (cudaStreamSynchronize, cudaEventSynchronize), every allocation (cudaMalloc, cudaHostAlloc) and
 * the kernel query (cudaFuncGetAttributes) return error, the context being lost (on a GPU every
 * later call would fail; here only those do), until it is disarmed (as a new process would be).
 * stub_fail_nth_capture: the n-th cudaStreamEndCapture returns cudaErrorStreamCaptureInvalidated and
 * no graph, the captured work dropped, as when a call the capture cannot hold invalidates it.
 * stub_fail_nth_create: the n-th create of a stream, an event, a cuDNN handle or descriptor or a
 * cuBLAS handle fails as out of memory (device memory; a descriptor's host memory), leaving in its
 * handle a value that is no object (what a failed create leaves is not documented): destroying it is
 * a misuse. */
int stub_fail_nth_launch(int n, int error, int captured_only);
int stub_fault_nth_kernel(int n, int error);
int stub_fail_nth_capture(int n);
int stub_fail_nth_create(int n);

/* Prints what is wrong (accesses outside every allocation, allocations or handles still live) and
 * returns nonzero if anything is. */
int stub_report(void);

#ifdef __cplusplus
}
#endif

#endif
