/* A stand-in for the CUDA runtime, cuDNN and cuBLAS, so that the CUDA backend's host side runs on a
 * machine without a GPU (tests/c/test_cuda_host.c, tests/c/backend_ops_on_cpu.sh, tools/host_cost.c).
 * Device memory is host memory; copies and memsets move real bytes. Kernels, convolutions and GEMMs
 * do nothing unless WANVIDEO_STUB_COMPUTE is 1 or 2: then they compute on the CPU (on_cpu.h). What it
 * checks: every range a copy, memset, convolution or GEMM touches lies inside one live allocation
 * (device memory from cudaMalloc, pinned memory from cudaHostAlloc, or the caller's own host memory
 * for copies), every handle is one it made and not yet destroyed, and nothing is left allocated at
 * the end (stub_report); no kernel is launched past a GPU's limits; each thread's CUDA context is
 * modelled (stub_current_context, stub_context_made). Work issued on a stream being captured is kept
 * in the graph, and runs (and is checked) each time a launch issues it, as on a GPU. Where the real
 * libraries are stricter than a loop, it is too (misuses: TF32 allowed in an fp32 convolution, an
 * output over its input; a fused bias call only with IMPLICIT_PRECOMP_GEMM; 256-byte alignment), and
 * memory comes as a GPU's does: aligned, and not zeroed where the stub computes.
 *
 * Work runs as late as a GPU may run it: not when it is issued, but when the host waits for it
 * (cudaStreamSynchronize, cudaEventSynchronize, cudaFree, a synchronous copy, a copy into pageable
 * memory), so host code reading a result, or reusing a buffer a copy still has to read, before it
 * waited gets what a GPU could give it then (stale bytes), not the answer.
 *
 * It also looks for races between streams: on a GPU two
 * streams run side by side unless an event orders them (cudaEventRecord, then cudaStreamWaitEvent)
 * or the host waited for the first before issuing the second. Each copy, memset, convolution and
 * GEMM is kept with the ranges it reads and writes, stamped with its stream's clock; one that
 * touches what another stream's unordered work writes (or writes what it reads) is reported as a
 * race. Kernels' arguments are opaque here, so what kernels touch is not checked, but for the one
 * kernel whose output another stream reads: write_output_kernel's staged frames, which the copy
 * stream takes to the host (kernel_on_cpu_writes).
 *
 * Only the calls the backend makes are here; a new one fails the link, which is the point. */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cxxabi.h>

#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cuda_stub.h"
#include "on_cpu.h"

/* ---- allocations and the checks on them -------------------------------------------------- */

enum { KIND_DEVICE, KIND_PINNED };

struct part {
    size_t offset, bytes;
};

struct block {
    char *p;
    size_t bytes;
    int kind;
    part *parts; /* an arena's named buffers (stub_arena_layout), else NULL */
    int n_parts;
    int device; /* device memory's GPU (cudaPointerGetAttributes) */
};

static block g_blocks[4096];
static int g_n_blocks;
static long g_violations;
static part *g_next_parts; /* the layout of the next allocation of g_next_bytes */
static int g_next_n_parts;
static size_t g_next_bytes;

static void violation(const char *what, const void *p, size_t bytes)
{
    if (g_violations++ < 20)
        fprintf(stderr, "cuda stub: %s: %zu bytes at %p outside every allocation or arena buffer\n", what, bytes, p);
}

/* A call the real library would refuse or run otherwise than meant: a misuse, as the violations. */
static void misuse(const char *what)
{
    if (g_violations++ < 20) fprintf(stderr, "cuda stub: %s\n", what);
}

static const block *block_of(const void *p)
{
    for (int i = 0; i < g_n_blocks; i++)
        if ((const char *)p >= g_blocks[i].p && (const char *)p < g_blocks[i].p + (g_blocks[i].bytes ? g_blocks[i].bytes : 1))
            return &g_blocks[i];
    return NULL;
}

/* Within an arena, a range must lie inside one of its buffers (they overlap where the plan shares
 * memory between phases, so any one will do), or be the whole arena (zeroed at a call's start). */
static int inside_a_part(const block *b, const void *p, size_t bytes)
{
    size_t lo = (size_t)((const char *)p - b->p);
    if (!b->parts || (lo == 0 && bytes == b->bytes)) return 1;
    for (int i = 0; i < b->n_parts; i++)
        if (lo >= b->parts[i].offset && lo + bytes <= b->parts[i].offset + b->parts[i].bytes) return 1;
    return 0;
}

/* [p, p + bytes) inside one device allocation (device only) or one of ours or none (any). */
static void check_device(const char *what, const void *p, size_t bytes)
{
    const block *b = block_of(p);
    if (!bytes) return;
    if (!b || b->kind != KIND_DEVICE || (const char *)p + bytes > b->p + b->bytes || !inside_a_part(b, p, bytes))
        violation(what, p, bytes);
}

static void check_any(const char *what, const void *p, size_t bytes)
{
    const block *b = block_of(p);
    if (bytes && b && ((const char *)p + bytes > b->p + b->bytes || !inside_a_part(b, p, bytes)))
        violation(what, p, bytes);
}

static int computing(void);

/* Memory as cudaMalloc and cudaHostAlloc give it: 256-byte aligned, not zeroed; where the stub
 * computes, all 0xFF bytes (a NaN in every float type), so what reads memory nothing wrote shows
 * (else untouched: a large arena costs no page until used). */
static cudaError_t take_block(void **out, size_t bytes, int kind)
{
    if (g_n_blocks == (int)(sizeof g_blocks / sizeof *g_blocks)) return cudaErrorMemoryAllocation;
    if (posix_memalign(out, 256, bytes ? bytes : 1)) return cudaErrorMemoryAllocation;
    if (computing()) memset(*out, 0xFF, bytes);
    g_blocks[g_n_blocks].p = (char *)*out;
    g_blocks[g_n_blocks].bytes = bytes;
    g_blocks[g_n_blocks].kind = kind;
    g_blocks[g_n_blocks].parts = NULL;
    g_blocks[g_n_blocks].n_parts = 0;
    g_blocks[g_n_blocks].device = 0;
    if (g_next_parts && kind == KIND_DEVICE && bytes == g_next_bytes) {
        g_blocks[g_n_blocks].parts = g_next_parts;
        g_blocks[g_n_blocks].n_parts = g_next_n_parts;
        g_next_parts = NULL;
    }
    g_n_blocks++;
    return cudaSuccess;
}

static cudaError_t give_block(void *p, int kind)
{
    if (!p) return cudaSuccess;
    for (int i = 0; i < g_n_blocks; i++)
        if (g_blocks[i].p == p && g_blocks[i].kind == kind) {
            free(p);
            free(g_blocks[i].parts);
            g_blocks[i] = g_blocks[--g_n_blocks];
            return cudaSuccess;
        }
    violation(kind == KIND_DEVICE ? "cudaFree of a pointer cudaMalloc did not return" : "cudaFreeHost", p, 0);
    return cudaErrorInvalidValue;
}

static int g_host_alloc_countdown;

int stub_fail_nth_host_alloc(int n)
{
    int left = g_host_alloc_countdown;
    g_host_alloc_countdown = n;
    return left;
}

static size_t held_bytes(int kind)
{
    size_t bytes = 0;
    for (int i = 0; i < g_n_blocks; i++)
        if (g_blocks[i].kind == kind) bytes += g_blocks[i].bytes;
    return bytes;
}

size_t stub_pinned_bytes(void) { return held_bytes(KIND_PINNED); }
size_t stub_device_bytes(void) { return held_bytes(KIND_DEVICE); }

/* ---- streams, events and the races between streams ----------------------------------------- */

/* One piece of work's access: [lo, hi) read, or written. */
struct access {
    const char *lo, *hi;
    int write;
};

struct work {
    uint64_t tick; /* its stream's clock when it was issued (1 for the stream's first) */
    const char *what;
    access acc[5];
    int n;
};

/* A stream's clock: ticks issued, and for every stream the ticks known done before its next work
 * starts (its own included). */
struct stream_state {
    uint64_t issued = 0;
    std::vector<uint64_t> known;
    std::deque<work> recent; /* its work that some stream may not yet be ordered after */
    bool destroyed = false;  /* issues nothing more: no longer one that work must be ordered before */
};

static stub_calls g_calls;

/* Times what the stub does in the device's place (moving bytes), for stub_counts. */
struct device_time {
    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
    ~device_time()
    {
        g_calls.device_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
};

static std::vector<stream_state> g_streams; /* by id: 0 the NULL stream, 1 legacy, 2 per-thread */
static std::vector<uint64_t> g_host_known;   /* ticks of each stream the host has waited for */
static long g_races;

static void grow(std::vector<uint64_t> &v) { v.resize(g_streams.size(), 0); }

static void merge(std::vector<uint64_t> &into, const std::vector<uint64_t> &from)
{
    grow(into);
    for (size_t i = 0; i < from.size(); i++) into[i] = into[i] > from[i] ? into[i] : from[i];
}

static int new_stream_id(void)
{
    if (g_streams.empty()) g_streams.resize(3);
    g_streams.emplace_back();
    return (int)g_streams.size() - 1;
}

/* What a piece of work does to the bytes (WANVIDEO_STUB_COMPUTE=1 for the arithmetic), run when
 * it is issued, or from its graph at each launch. */
typedef std::shared_ptr<std::function<void()>> action;

struct captured {
    work w;
    action act;
    std::shared_ptr<char> holds; /* a graph-API plan's token (backend_desc::held): its kernels are in the graph */
};

/* Handles: each a live object of its type, counted. */
struct CUstream_st {
    int id = new_stream_id();
    unsigned flags = 0;
    std::vector<captured> *capture = nullptr; /* while a graph is being captured: its work */
    ~CUstream_st() { g_streams[(size_t)id].destroyed = true; } /* its state stays: its work may still race */
};
struct CUevent_st {
    std::vector<uint64_t> snapshot;
    unsigned flags = 0;
    bool captured = false; /* last recorded in a stream being captured: a graph's, not the stream's */
};
struct CUgraph_st { std::vector<captured> steps; };
struct CUgraphExec_st { std::vector<captured> steps; };
struct cudnnContext { cudaStream_t stream; };
struct cudnnTensorStruct { int nd, dims[8], strides[8]; cudnnDataType_t type; };
struct cudnnFilterStruct { int nd, dims[8]; cudnnDataType_t type; cudnnTensorFormat_t format; };
struct cudnnConvolutionStruct { int n, pad[6], stride[6], dilation[6]; cudnnMathType_t math; cudnnDataType_t compute; };
struct cudnnActivationStruct { cudnnActivationMode_t mode; };
struct cublasContext { cudaStream_t stream; void *ws = nullptr; size_t ws_bytes = 0; cublasMath_t math = CUBLAS_DEFAULT_MATH; };

static long g_handles;

template <typename T> static long &live_of_type(void)
{
    static long live;
    return live;
}

template <typename T> static long &made_of_type(void)
{
    static long made;
    return made;
}

template <typename T> static T *make_handle(void)
{
    g_handles++, live_of_type<T>()++, made_of_type<T>()++;
    return new T();
}

/* What a failed create leaves in its handle here (stub_fail_nth_create): no object, and not null. */
#define FAILED_HANDLE ((uintptr_t)0xbadc0de0)

template <typename T> static void drop_handle(T *h)
{
    if ((uintptr_t)h == FAILED_HANDLE) misuse("a handle whose create failed destroyed");
    else if (h) g_handles--, live_of_type<T>()--, delete h;
}

/* The runtime's faults (cuda_stub.h): a countdown to the event that fails, and what it fails with. */
struct fault {
    int left;
    cudaError_t error;
};
static fault g_launch_fault, g_kernel_fault, g_capture_fault, g_create_fault;
static bool g_launch_fault_captured_only;
/* the context is lost (stub_fault_nth_kernel): every wait, allocation and kernel query returns this */
static cudaError_t g_lost;

static int arm(fault &f, int n, int error)
{
    int left = f.left;
    f.left = n > 0 ? n : 0, f.error = (cudaError_t)error;
    return left;
}

/* Whether this event is the one the fault waits for. */
static bool strikes(fault &f) { return f.left > 0 && --f.left == 0; }

/* Whether this create is the one stub_fail_nth_create fails: then its handle is left FAILED_HANDLE. */
template <typename H> static bool create_fails(H *h)
{
    if (!strikes(g_create_fault)) return false;
    *h = (H)FAILED_HANDLE;
    return true;
}

static stream_state &state_of(cudaStream_t s)
{
    uintptr_t u = (uintptr_t)s;
    if (g_streams.empty()) g_streams.resize(3);
    return g_streams[u <= 2 ? u : (size_t)s->id];
}

static int overlap(const access &a, const access &b) { return (a.write || b.write) && a.lo < b.hi && b.lo < a.hi; }

static int is_special(cudaStream_t s) { return (uintptr_t)s <= 2; }

/* A call issued now (not into a graph being captured), counted. */
static void count(cudaStream_t s, long &calls)
{
    if (is_special(s) || !s->capture) calls++;
}

/* Work w on stream s: checked against every other stream's work that s is not ordered after, then
 * kept. Work the host, or every stream not yet destroyed, is ordered after is dropped. Returns its
 * stream's index and its tick there. */
static std::pair<size_t, uint64_t> check_work(cudaStream_t s, work w)
{
    stream_state &me = state_of(s);
    size_t id = (size_t)(&me - g_streams.data());
    merge(me.known, g_host_known); /* what the host waited for is done before anything it issues now */
    w.tick = ++me.issued;
    me.known[id] = w.tick;
    for (size_t o = 0; o < g_streams.size(); o++) {
        if (o == id) continue;
        uint64_t ordered = o < me.known.size() ? me.known[o] : 0;
        for (const work &x : g_streams[o].recent) {
            if (x.tick <= ordered) continue;
            for (int i = 0; i < x.n; i++)
                for (int j = 0; j < w.n; j++)
                    if (overlap(x.acc[i], w.acc[j]) && g_races++ < 20)
                        fprintf(stderr, "cuda stub: race: %s (stream %zu) and %s (stream %zu), unordered, touch %p\n",
                                w.what, id, x.what, o, (const void *)(x.acc[i].lo > w.acc[j].lo ? x.acc[i].lo : w.acc[j].lo));
        }
    }
    if (w.n) me.recent.push_back(w);
    /* each stream a test ever made stays in g_streams: skipping the empty and the destroyed keeps
     * this from growing as the square of their number */
    for (size_t o = 0; o < g_streams.size(); o++) {
        if (g_streams[o].recent.empty()) continue;
        uint64_t floor = o < g_host_known.size() ? g_host_known[o] : 0, least = UINT64_MAX;
        for (size_t t = 0; t < g_streams.size(); t++) {
            if (t == o || g_streams[t].destroyed) continue;
            uint64_t k = o < g_streams[t].known.size() ? g_streams[t].known[o] : 0;
            least = least < k ? least : k;
        }
        floor = floor > least ? floor : least;
        while (!g_streams[o].recent.empty() && g_streams[o].recent.front().tick <= floor) g_streams[o].recent.pop_front();
    }
    return {id, w.tick};
}

/* Work issued and not yet run, in the order it was issued: each piece runs once the host has waited
 * for it (g_host_known), which covers all it was ordered after, so running the covered pieces in
 * issue order keeps every order the program asked for. */
struct pending {
    size_t stream;
    uint64_t tick;
    action act;
};
static std::deque<pending> g_pending;

static void defer(std::pair<size_t, uint64_t> at, const action &act)
{
    if (act) g_pending.push_back({at.first, at.second, act});
}

static void run_waited_for(void)
{
    for (auto it = g_pending.begin(); it != g_pending.end();) {
        if (it->tick > (it->stream < g_host_known.size() ? g_host_known[it->stream] : 0)) {
            ++it;
            continue;
        }
        action act = it->act;
        it = g_pending.erase(it);
        (*act)();
    }
}

static int g_capturing; /* streams being captured into graphs */

/* ---- devices and contexts --------------------------------------------------------------------- */

/* Each thread's current device and current context (a device's primary context, or none), and
 * which devices' primary contexts exist: as the real runtime, cudaSetDevice creates the device's
 * context, and a call that needs one with none current creates the current device's. */
#define STUB_MAX_DEVICES 8
static int g_device_count = 1;
static int g_driver_version = 13000; /* below the runtime's (13000): cudaErrorInsufficientDriver */
static int g_context_made[STUB_MAX_DEVICES];
static char g_context_handles[STUB_MAX_DEVICES]; /* a context handle: the address of its device's */
static char g_foreign_handles[STUB_MAX_DEVICES]; /* a non-primary context per device (the driver API's) */
static thread_local int t_device;
static thread_local int t_context; /* device + 1; 0: none current */
static thread_local int t_foreign; /* device + 1 of the non-primary context current instead; 0: none */
static int g_foreign_uses;         /* calls that needed a context while a non-primary one was current */
static int g_refused_device = -1;  /* whose context cudaSetDevice cannot make (stub_refuse_context) */
static cudaError_t g_last_error;   /* what a failed call left (stub_cudnn_decline_leaves_launch_error) */

static void make_current(int device)
{
    g_context_made[device] = 1;
    t_context = device + 1;
    t_foreign = 0;
    t_device = device;
}

static void need_context(void)
{
    if (t_foreign) {
        g_foreign_uses++; /* the runtime would work in the caller's context: memory our primary one cannot use */
        return;
    }
    if (!t_context) make_current(t_device);
}

extern "C" void stub_make_foreign_context_current(int device)
{
    t_context = 0;
    t_foreign = device + 1;
    t_device = device;
}

extern "C" int stub_foreign_context_current(void) { return t_foreign - 1; }

extern "C" int stub_foreign_context_uses(void) { return g_foreign_uses; }

extern "C" void stub_set_driver_version(int v) { g_driver_version = v; }

static int g_gpu_major = 9, g_gpu_minor = 0, g_kernel_image = 1;

extern "C" void stub_set_gpu(int major, int minor, int has_kernel_image)
{
    g_gpu_major = major;
    g_gpu_minor = minor;
    g_kernel_image = has_kernel_image;
}

extern "C" void stub_set_device_count(int n)
{
    g_device_count = n < 1 ? 1 : n > STUB_MAX_DEVICES ? STUB_MAX_DEVICES : n;
    memset(g_context_made, 0, sizeof g_context_made);
}

extern "C" int stub_context_made(int device)
{
    return device >= 0 && device < STUB_MAX_DEVICES && g_context_made[device];
}

extern "C" int stub_current_context(void) { return t_context - 1; }

static int stub_cuCtxGetCurrent(void **ctx)
{
    *ctx = t_foreign ? &g_foreign_handles[t_foreign - 1] : t_context ? &g_context_handles[t_context - 1] : NULL;
    return 0;
}

static int stub_cuCtxSetCurrent(void *ctx)
{
    char *c = (char *)ctx;
    int foreign = c >= g_foreign_handles && c < g_foreign_handles + STUB_MAX_DEVICES;
    t_foreign = foreign ? (int)(c - g_foreign_handles) + 1 : 0;
    t_context = ctx && !foreign ? (int)(c - g_context_handles) + 1 : 0;
    if (t_context || t_foreign) t_device = (t_context ? t_context : t_foreign) - 1;
    return 0;
}

/* A call that waits for the device (or for a stream) is illegal while a stream is captured. */
static void no_capture(const char *what)
{
    if (g_capturing && g_violations++ < 20) fprintf(stderr, "cuda stub: %s while a stream is captured\n", what);
}

/* cudaFree and cudaFreeHost wait for the whole device. */
static void device_synchronized(void)
{
    for (size_t i = 0; i < g_streams.size(); i++) {
        grow(g_host_known);
        g_host_known[i] = g_streams[i].issued;
        g_streams[i].recent.clear();
    }
    run_waited_for();
}

/* The host waits for stream s's work, and all it was ordered after. */
static void stream_synchronized(cudaStream_t s)
{
    stream_state &st = state_of(s);
    merge(g_host_known, st.known);
    g_host_known[(size_t)(&st - g_streams.data())] = st.issued;
    run_waited_for();
}

/* Work on stream s: kept in the graph while s is being captured, else checked and done. */
static void issue(cudaStream_t s, const char *what, std::initializer_list<access> accesses, action act = nullptr,
                  std::shared_ptr<char> holds = nullptr)
{
    need_context();
    work w;
    w.tick = 0;
    w.what = what;
    w.n = 0;
    for (const access &a : accesses)
        if (a.hi > a.lo && w.n < 5) w.acc[w.n++] = a;
    if (!is_special(s) && s->capture) {
        s->capture->push_back({w, act, holds});
        return;
    }
    defer(check_work(s, w), act);
}

static action make_action(std::function<void()> f) { return std::make_shared<std::function<void()>>(std::move(f)); }

/* WANVIDEO_STUB_COMPUTE: 0 (unset) the stub moves bytes only; 1 it does the arithmetic too (kernels
 * on the CPU, convolutions, GEMMs); 2 the same with the kernels whose threads cooperate replaced by
 * plain loops (on_cpu.h), for whole decodes. */
static int compute_mode(void)
{
    static int mode = -1;
    if (mode < 0) {
        const char *e = getenv("WANVIDEO_STUB_COMPUTE");
        mode = e ? atoi(e) : 0;
    }
    return mode;
}

static int computing(void) { return compute_mode() > 0; }

static access reads(const void *p, size_t bytes) { return access{(const char *)p, (const char *)p + bytes, 0}; }
static access writes(const void *p, size_t bytes) { return access{(const char *)p, (const char *)p + bytes, 1}; }

static size_t type_bytes(cudnnDataType_t t) { return t == CUDNN_DATA_FLOAT ? 4 : 2; }

/* The bytes a strided tensor spans: its last element's offset, plus one. */
static size_t tensor_span(const cudnnTensorStruct *d)
{
    size_t last = 0;
    for (int i = 0; i < d->nd; i++) last += (size_t)(d->dims[i] - 1) * (size_t)d->strides[i];
    return (last + 1) * type_bytes(d->type);
}

static size_t filter_span(const cudnnFilterStruct *d)
{
    size_t n = 1;
    for (int i = 0; i < d->nd; i++) n *= (size_t)d->dims[i];
    return n * type_bytes(d->type);
}

extern "C" void stub_arena_layout(size_t arena_bytes, int n, const size_t *offsets, const size_t *sizes)
{
    free(g_next_parts);
    g_next_parts = (part *)malloc(sizeof(part) * (size_t)(n > 0 ? n : 1));
    g_next_n_parts = n;
    g_next_bytes = arena_bytes;
    for (int i = 0; i < n; i++) g_next_parts[i].offset = offsets[i], g_next_parts[i].bytes = sizes[i];
}

extern "C" stub_calls stub_counts(void) { return g_calls; }

extern "C" long stub_live_convolution_descriptors(void) { return live_of_type<cudnnConvolutionStruct>(); }

extern "C" long stub_convolution_descriptors_made(void) { return made_of_type<cudnnConvolutionStruct>(); }

static long g_graph_execs_most; /* stub_graph_execs_most's */

extern "C" long stub_graph_execs_most(void)
{
    long most = g_graph_execs_most;
    g_graph_execs_most = live_of_type<CUgraphExec_st>();
    return most;
}

struct backend_desc;
extern "C" long stub_live_backend_descriptors(void) { return live_of_type<backend_desc>(); }

extern "C" int stub_report(void)
{
    free(g_next_parts);
    g_next_parts = NULL;
    int bad = g_violations != 0 || g_n_blocks != 0 || g_handles != 0 || g_races != 0;
    if (g_n_blocks) fprintf(stderr, "cuda stub: %d allocations left\n", g_n_blocks);
    if (g_races) fprintf(stderr, "cuda stub: %ld races between streams\n", g_races);
    if (g_handles) fprintf(stderr, "cuda stub: %ld handles left\n", g_handles);
    if (g_violations)
        fprintf(stderr, "cuda stub: %ld misuses (accesses out of range, launches past the limits, waits in a capture, "
                        "calls against a library's contract; the first 20 above)\n", g_violations);
    return bad;
}


/* ---- the runtime ---------------------------------------------------------------------------- */

extern "C" {

cudaError_t cudaGetDeviceCount(int *count)
{
    *count = g_driver_version < 13000 ? 0 : g_device_count;
    return g_driver_version < 13000 ? cudaErrorInsufficientDriver : cudaSuccess;
}

cudaError_t cudaGetDevice(int *device)
{
    *device = t_context ? t_context - 1 : t_foreign ? t_foreign - 1 : t_device;
    return cudaSuccess;
}

extern "C" void stub_refuse_context(int device) { g_refused_device = device; }

cudaError_t cudaSetDevice(int device)
{
    if (device < 0 || device >= g_device_count) return cudaErrorInvalidDevice;
    if (device == g_refused_device) return g_last_error = cudaErrorDevicesUnavailable; /* nothing made current */
    make_current(device);
    return cudaSuccess;
}

static void *driver_symbol(const char *symbol)
{
    return !strcmp(symbol, "cuCtxGetCurrent")   ? (void *)stub_cuCtxGetCurrent
           : !strcmp(symbol, "cuCtxSetCurrent") ? (void *)stub_cuCtxSetCurrent
                                                : NULL;
}

/* the entry-point lookup of the toolkit the backend is built with */
#if CUDART_VERSION >= 12050
cudaError_t cudaGetDriverEntryPointByVersion(const char *symbol, void **fn, unsigned int version,
                                             unsigned long long flags, cudaDriverEntryPointQueryResult *found)
{
    (void)version, (void)flags;
    *fn = driver_symbol(symbol);
    if (found) *found = *fn ? cudaDriverEntryPointSuccess : cudaDriverEntryPointSymbolNotFound;
    return cudaSuccess;
}
#elif CUDART_VERSION >= 12000
cudaError_t cudaGetDriverEntryPoint(const char *symbol, void **fn, unsigned long long flags,
                                    cudaDriverEntryPointQueryResult *found)
{
    (void)flags;
    *fn = driver_symbol(symbol);
    if (found) *found = *fn ? cudaDriverEntryPointSuccess : cudaDriverEntryPointSymbolNotFound;
    return cudaSuccess;
}
#else
cudaError_t cudaGetDriverEntryPoint(const char *symbol, void **fn, unsigned long long flags)
{
    (void)flags;
    *fn = driver_symbol(symbol);
    return *fn ? cudaSuccess : cudaErrorSymbolNotFound;
}
#endif

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device)
{
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "CUDA stub");
    prop->major = g_gpu_major;
    prop->minor = g_gpu_minor;
    prop->totalGlobalMem = (size_t)80 << 30;
    prop->multiProcessorCount = 132;
    return device >= 0 && device < g_device_count ? cudaSuccess : cudaErrorInvalidDevice;
}

/* Free memory: the 80 GiB less what cudaMalloc holds now (the tests of memory going back to its level); a
 * lost context answers its error, as every call of a GPU's runtime that needs the context does. */
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b)
{
    need_context();
    if (g_lost != cudaSuccess) return g_lost;
    *total_b = (size_t)80 << 30;
    *free_b = *total_b - held_bytes(KIND_DEVICE);
    return cudaSuccess;
}

/* Without a driver it answers 0, as CUDA 11's runtime does (12's gives its version anyway). */
cudaError_t cudaRuntimeGetVersion(int *v)
{
    *v = g_driver_version ? 13000 : 0;
    return g_driver_version ? cudaSuccess : cudaErrorInsufficientDriver;
}

cudaError_t cudaDriverGetVersion(int *v)
{
    *v = g_driver_version;
    return cudaSuccess;
}

extern "C" int stub_fail_nth_launch(int n, int error, int captured_only)
{
    g_launch_fault_captured_only = captured_only != 0;
    return arm(g_launch_fault, n, error);
}

extern "C" int stub_fault_nth_kernel(int n, int error)
{
    g_lost = cudaSuccess;
    return arm(g_kernel_fault, n, error);
}

extern "C" int stub_fail_nth_capture(int n) { return arm(g_capture_fault, n, cudaErrorStreamCaptureInvalidated); }

extern "C" int stub_fail_nth_create(int n) { return arm(g_create_fault, n, 0); /* each library its own status */ }

cudaError_t cudaGetLastError(void)
{
    cudaError_t e = g_last_error;
    g_last_error = cudaSuccess;
    return e;
}

cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *attr, const void *func)
{
    need_context();
    memset(attr, 0, sizeof *attr);
    if (g_lost != cudaSuccess) return g_last_error = g_lost;
    if (!func) return g_last_error = cudaErrorInvalidDeviceFunction;
    if (g_kernel_image < 0) return g_last_error = cudaErrorMemoryAllocation;
    return g_kernel_image ? cudaSuccess : (g_last_error = cudaErrorNoKernelImageForDevice);
}

const char *cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "CUDA stub error"; }

cudaError_t cudaMalloc(void **p, size_t bytes)
{
    need_context();
    no_capture("cudaMalloc");
    device_time t;
    if (g_lost != cudaSuccess) return g_lost;
    cudaError_t e = take_block(p, bytes, KIND_DEVICE);
    if (e == cudaSuccess) g_blocks[g_n_blocks - 1].device = t_device;
    return e;
}

cudaError_t cudaFree(void *p)
{
    device_time t;
    no_capture("cudaFree");
    device_synchronized();
    return give_block(p, KIND_DEVICE);
}

cudaError_t cudaHostAlloc(void **p, size_t bytes, unsigned int flags)
{
    need_context();
    (void)flags;
    if (g_lost != cudaSuccess) return g_lost;
    if (g_host_alloc_countdown < 0 || (g_host_alloc_countdown > 0 && --g_host_alloc_countdown == 0))
        return cudaErrorMemoryAllocation;
    return take_block(p, bytes, KIND_PINNED);
}

cudaError_t cudaFreeHost(void *p)
{
    no_capture("cudaFreeHost");
    device_synchronized();
    return give_block(p, KIND_PINNED);
}

cudaError_t cudaPointerGetAttributes(cudaPointerAttributes *attr, const void *p)
{
    const block *b = block_of(p);
    memset(attr, 0, sizeof *attr);
    attr->type = !b ? cudaMemoryTypeUnregistered : b->kind == KIND_DEVICE ? cudaMemoryTypeDevice : cudaMemoryTypeHost;
    attr->devicePointer = b ? (void *)p : NULL;
    attr->hostPointer = b && b->kind == KIND_PINNED ? (void *)p : NULL;
    attr->device = b && b->kind == KIND_DEVICE ? b->device : 0;
    return cudaSuccess;
}

/* A copy with a pageable host side (memory neither cudaMalloc nor cudaHostAlloc gave) on a stream being
 * captured: the driver stages pageable memory by synchronizing with the stream, which a capture forbids
 * (cudaErrorStreamCaptureUnsupported); a graph could not replay it anyway. */
static void no_pageable_in_capture(const char *what, cudaStream_t s, const void *dst, const void *src, size_t bytes)
{
    if (bytes && !is_special(s) && s->capture && (!block_of(dst) || !block_of(src)))
        misuse(std::string(what).append(" to or from pageable host memory while the stream is captured").c_str());
}

/* A copy's source as the copy will read it: pageable memory (neither cudaMalloc's nor cudaHostAlloc's)
 * is staged when the copy is issued, and the caller may reuse it at once; else it is read in place,
 * when the copy runs. */
static std::shared_ptr<std::vector<char>> staged_if_pageable(const void *src, size_t bytes)
{
    if (block_of(src)) return nullptr;
    return std::make_shared<std::vector<char>>((const char *)src, (const char *)src + bytes);
}

/* A copy into pageable memory returns once it is done, and all its stream's work before it. */
static void done_if_pageable(const void *dst, cudaStream_t s)
{
    if (!block_of(dst) && (is_special(s) || !s->capture)) stream_synchronized(s);
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s)
{
    (void)kind;
    no_pageable_in_capture("cudaMemcpyAsync", s, dst, src, bytes);
    check_any("cudaMemcpyAsync source", src, bytes);
    check_any("cudaMemcpyAsync destination", dst, bytes);
    count(s, g_calls.copies);
    std::shared_ptr<std::vector<char>> staged = staged_if_pageable(src, bytes);
    issue(s, "cudaMemcpyAsync", {reads(src, bytes), writes(dst, bytes)}, make_action([=] {
              device_time t;
              memmove(dst, staged ? staged->data() : src, bytes);
          }));
    done_if_pageable(dst, s);
    return cudaSuccess;
}

/* A synchronous copy waits for the device (the legacy stream's rule), then moves the bytes. */
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind)
{
    (void)kind;
    no_capture("cudaMemcpy");
    check_any("cudaMemcpy source", src, bytes);
    check_any("cudaMemcpy destination", dst, bytes);
    device_synchronized();
    memmove(dst, src, bytes);
    count(NULL, g_calls.copies);
    return cudaSuccess;
}

cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind kind, cudaStream_t s)
{
    (void)kind;
    if (width > dpitch || width > spitch) return cudaErrorInvalidPitchValue;
    if (!height || !width) return cudaSuccess;
    no_pageable_in_capture("cudaMemcpy2DAsync", s, dst, src, width);
    check_any("cudaMemcpy2DAsync source", src, spitch * (height - 1) + width);
    check_any("cudaMemcpy2DAsync destination", dst, dpitch * (height - 1) + width);
    count(s, g_calls.copies);
    size_t src_bytes = spitch * (height - 1) + width;
    std::shared_ptr<std::vector<char>> staged = staged_if_pageable(src, src_bytes);
    issue(s, "cudaMemcpy2DAsync", {reads(src, src_bytes), writes(dst, dpitch * (height - 1) + width)},
          make_action([=] {
              device_time t;
              const char *from = staged ? staged->data() : (const char *)src;
              for (size_t r = 0; r < height; r++) memmove((char *)dst + r * dpitch, from + r * spitch, width);
          }));
    done_if_pageable(dst, s);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t s)
{
    check_device("cudaMemsetAsync", p, bytes);
    count(s, g_calls.copies);
    issue(s, "cudaMemsetAsync", {writes(p, bytes)}, make_action([=] {
              device_time t;
              memset(p, value, bytes);
          }));
    return cudaSuccess;
}

/* A runtime object's create (with flags) and destroy: a live handle of its own type, counted. */
#define RUNTIME_OBJECT(create, destroy, handle_t, object)      \
    cudaError_t create(handle_t *h, unsigned int flags)        \
    {                                                          \
        need_context();                                        \
        if (create_fails(h)) return cudaErrorMemoryAllocation; \
        *h = make_handle<object>();                            \
        (*h)->flags = flags;                                   \
        return cudaSuccess;                                    \
    }                                                          \
    cudaError_t destroy(handle_t h)                            \
    {                                                          \
        drop_handle(h);                                        \
        return cudaSuccess;                                    \
    }

RUNTIME_OBJECT(cudaStreamCreateWithFlags, cudaStreamDestroy, cudaStream_t, CUstream_st)
RUNTIME_OBJECT(cudaEventCreateWithFlags, cudaEventDestroy, cudaEvent_t, CUevent_st)

/* The stream's work is done, and all it was ordered after. */
cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    need_context();
    no_capture("cudaStreamSynchronize");
    g_calls.spinning_waits++;
    stream_synchronized(s);
    return g_lost;
}

/* An event last recorded during a capture stands for a node of the graph, not for the stream's work:
 * the host may not wait for it (cudaErrorCapturedEvent), and a stream outside the capture that waits
 * for it joins the capture (its work is captured too, and must join back before the capture ends, or
 * cudaStreamEndCapture fails with cudaErrorStreamCaptureUnjoined), which the stub does not model. */
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned int flags)
{
    (void)flags;
    if (e->captured && (is_special(s) || !s->capture))
        misuse("cudaStreamWaitEvent outside a capture on an event recorded inside it (the stream would join the capture)");
    merge(state_of(s).known, e->snapshot);
    return cudaSuccess;
}

/* The event stands for the stream's work so far, and all it was ordered after. */
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s)
{
    stream_state &st = state_of(s);
    e->captured = !is_special(s) && s->capture;
    merge(st.known, g_host_known);
    st.known[(size_t)(&st - g_streams.data())] = st.issued;
    e->snapshot = st.known;
    return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t e)
{
    need_context();
    no_capture("cudaEventSynchronize");
    if (e->captured) misuse("cudaEventSynchronize on an event last recorded in a captured stream (cudaErrorCapturedEvent)");
    if (!(e->flags & cudaEventBlockingSync)) g_calls.spinning_waits++;
    merge(g_host_known, e->snapshot);
    run_waited_for();
    return g_lost;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode)
{
    (void)mode;
    if (is_special(s) || s->capture) return cudaErrorIllegalState;
    s->capture = new std::vector<captured>();
    g_capturing++;
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g)
{
    if (is_special(s) || !s->capture) return cudaErrorIllegalState;
    bool invalidated = strikes(g_capture_fault);
    *g = invalidated ? nullptr : make_handle<CUgraph_st>();
    if (!invalidated) (*g)->steps.swap(*s->capture);
    delete s->capture;
    s->capture = nullptr;
    g_capturing--;
    return invalidated ? g_capture_fault.error : cudaSuccess;
}

cudaError_t cudaGraphInstantiateWithFlags(cudaGraphExec_t *exec, cudaGraph_t g, unsigned long long flags)
{
    (void)flags;
    *exec = make_handle<CUgraphExec_st>();
    (*exec)->steps = g->steps;
    g_calls.graph_captures++;
    g_graph_execs_most = std::max(g_graph_execs_most, live_of_type<CUgraphExec_st>());
    return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s)
{
    g_calls.graph_launches++;
    for (const captured &c : exec->steps) defer(check_work(s, c.w), c.act);
    return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t g)
{
    drop_handle(g);
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec)
{
    drop_handle(exec);
    return cudaSuccess;
}

/* What nvcc's host code calls to register and launch kernels (crt/host_runtime.h). */
void **__cudaRegisterFatBinary(void *fat)
{
    static void *handle;
    (void)fat;
    return &handle;
}

void __cudaRegisterFatBinaryEnd(void **handle) { (void)handle; }

void __cudaUnregisterFatBinary(void **handle) { (void)handle; }

/* Each kernel's host function and its name as the demangler prints it without the return type and
 * the parameters ("pixel_shuffle_kernel<uint4>"): on_cpu.cpp finds its CPU version by that name. */
static std::map<const void *, std::string> &kernel_names(void)
{
    static std::map<const void *, std::string> names;
    return names;
}

void __cudaRegisterFunction(void **handle, const char *host_fun, char *device_fun, const char *device_name,
                            int thread_limit, uint3 *tid, uint3 *bid, dim3 *bdim, dim3 *gdim, int *wsize)
{
    int status = 0;
    char *full = abi::__cxa_demangle(device_name, NULL, NULL, &status);
    std::string name = full && !status ? full : device_name;
    (void)handle, (void)device_fun, (void)thread_limit, (void)tid, (void)bid, (void)bdim, (void)gdim, (void)wsize;
    free(full);
    if (name.compare(0, 5, "void ") == 0) name.erase(0, 5);
    if (name.find('(') != std::string::npos) name.erase(name.find('('));
    kernel_names()[(const void *)host_fun] = name;
}

/* kernel<<<grid, block, shared, stream>>>: nvcc's host code pushes the launch's configuration, then
 * the kernel's host function pops it and launches. */
struct call_configuration {
    dim3 grid, block;
    size_t shared;
    cudaStream_t stream;
};
static std::vector<call_configuration> g_configurations;

unsigned __cudaPushCallConfiguration(dim3 grid, dim3 block, size_t shared, struct CUstream_st *s)
{
    need_context();
    g_configurations.push_back({grid, block, shared, s});
    return 0;
}

cudaError_t __cudaPopCallConfiguration(dim3 *grid, dim3 *block, size_t *shared, void *s)
{
    if (g_configurations.empty()) return cudaErrorInvalidConfiguration;
    call_configuration c = g_configurations.back();
    g_configurations.pop_back();
    *grid = c.grid, *block = c.block, *shared = c.shared;
    *(cudaStream_t *)s = c.stream;
    return cudaSuccess;
}

/* What every GPU refuses to launch (cudaErrorInvalidConfiguration): a grid dimension of 0 or past
 * its limit, a block of more than 1024 threads, more dynamic shared memory than the default 48 KiB
 * (more needs cudaFuncSetAttribute, which the backend does not call). */
static bool launchable(dim3 grid, dim3 block, size_t shared)
{
    uint64_t threads = (uint64_t)block.x * block.y * block.z;
    return grid.x >= 1 && grid.x <= 0x7fffffffu && grid.y >= 1 && grid.y <= 65535 && grid.z >= 1 &&
           grid.z <= 65535 && threads >= 1 && threads <= 1024 && block.z <= 64 && shared <= (48u << 10);
}

/* A launch of the kernel whose host function is `kernel`. */
static cudaError_t launch_kernel(const void *kernel, dim3 grid, dim3 block, void **args, size_t shared, cudaStream_t s)
{
    const std::string &name = kernel_names()[kernel];
    action run;
    const void *out = nullptr;
    size_t out_bytes = 0;
    if (!launchable(grid, block, shared)) {
        if (g_violations++ < 20)
            fprintf(stderr, "cuda stub: kernel '%s' launched on a %ux%ux%u grid of %ux%ux%u blocks, %zu B shared: "
                            "past the GPU's limits\n", name.c_str(), grid.x, grid.y, grid.z, block.x, block.y,
                    block.z, shared);
        return cudaErrorInvalidConfiguration;
    }
    if ((!g_launch_fault_captured_only || (!is_special(s) && s->capture)) && strikes(g_launch_fault))
        return g_last_error = g_launch_fault.error;
    if (strikes(g_kernel_fault)) g_lost = g_kernel_fault.error;
    count(s, g_calls.kernels);
    if (computing()) {
        unsigned g[3] = {grid.x, grid.y, grid.z}, b[3] = {block.x, block.y, block.z};
        void *bound = kernel_on_cpu_bind(name.c_str(), args, g, b, compute_mode() == 2);
        if (!bound) {
            if (g_violations++ < 20) fprintf(stderr, "cuda stub: no CPU version of kernel '%s'\n", name.c_str());
            return cudaErrorInvalidDeviceFunction;
        }
        std::shared_ptr<void> held(bound, kernel_on_cpu_free);
        run = make_action([held] { kernel_on_cpu_run(held.get()); });
    }
    if (!kernel_on_cpu_writes(name.c_str(), args, &out, &out_bytes)) out_bytes = 0;
    issue(s, "kernel", {writes(out, out_bytes)}, run);
    return cudaSuccess;
}

/* CUDA 11's and 12's kernel stubs launch through the public call with the host function; 13's
 * through __cudaLaunchKernel with the handle __cudaGetKernel gave them, the host function here. */
cudaError_t cudaLaunchKernel(const void *fun, dim3 grid, dim3 block, void **args, size_t shared, cudaStream_t s)
{
    return launch_kernel(fun, grid, block, args, shared, s);
}

#if CUDART_VERSION >= 12000 /* cudaKernel_t */
cudaError_t __cudaGetKernel(cudaKernel_t *kernel, const void *fun)
{
    *kernel = (cudaKernel_t)fun;
    return cudaSuccess;
}

cudaError_t __cudaLaunchKernel(cudaKernel_t kernel, dim3 grid, dim3 block, void **args, size_t shared,
                               cudaStream_t s)
{
    return launch_kernel((const void *)kernel, grid, block, args, shared, s);
}
#endif

/* ---- cuDNN ---------------------------------------------------------------------------------- */

/* A library object's create and destroy: a live handle of its own type, counted; `made` comes first
 * (the handles that take the device make its context, as their libraries do); a create that
 * stub_fail_nth_create fails returns `nomem`. */
#define LIBRARY_OBJECT(status_t, ok, nomem, create, destroy, handle_t, object, made) \
    status_t create(handle_t *h)                                                     \
    {                                                                                \
        made;                                                                        \
        if (create_fails(h)) return nomem;                                           \
        *h = make_handle<object>();                                                  \
        return ok;                                                                   \
    }                                                                                \
    status_t destroy(handle_t h)                                                     \
    {                                                                                \
        drop_handle(h);                                                              \
        return ok;                                                                   \
    }
#define CUDNN_OBJECT(create, destroy, handle_t, object) \
    LIBRARY_OBJECT(cudnnStatus_t, CUDNN_STATUS_SUCCESS, CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED, create, \
                   destroy, handle_t, object, (void)0)

size_t cudnnGetVersion(void) { return 91900; }

const char *cudnnGetErrorString(cudnnStatus_t s) { return s == CUDNN_STATUS_SUCCESS ? "success" : "cuDNN stub error"; }

LIBRARY_OBJECT(cudnnStatus_t, CUDNN_STATUS_SUCCESS, CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED, cudnnCreate,
               cudnnDestroy, cudnnHandle_t, cudnnContext, need_context())

cudnnStatus_t cudnnSetStream(cudnnHandle_t h, cudaStream_t s)
{
    h->stream = s;
    return CUDNN_STATUS_SUCCESS;
}

CUDNN_OBJECT(cudnnCreateTensorDescriptor, cudnnDestroyTensorDescriptor, cudnnTensorDescriptor_t,
             cudnnTensorStruct)
cudnnStatus_t cudnnSetTensorNdDescriptor(cudnnTensorDescriptor_t d, cudnnDataType_t type, int nd, const int dims[],
                                         const int strides[])
{
    if (nd < 1 || nd > 8) return CUDNN_STATUS_BAD_PARAM;
    d->nd = nd, d->type = type;
    memcpy(d->dims, dims, sizeof(int) * (size_t)nd), memcpy(d->strides, strides, sizeof(int) * (size_t)nd);
    return CUDNN_STATUS_SUCCESS;
}

CUDNN_OBJECT(cudnnCreateFilterDescriptor, cudnnDestroyFilterDescriptor, cudnnFilterDescriptor_t, cudnnFilterStruct)
cudnnStatus_t cudnnSetFilterNdDescriptor(cudnnFilterDescriptor_t d, cudnnDataType_t type, cudnnTensorFormat_t format,
                                         int nd, const int dims[])
{
    if (nd < 1 || nd > 8) return CUDNN_STATUS_BAD_PARAM;
    d->nd = nd, d->type = type, d->format = format;
    memcpy(d->dims, dims, sizeof(int) * (size_t)nd);
    return CUDNN_STATUS_SUCCESS;
}

CUDNN_OBJECT(cudnnCreateConvolutionDescriptor, cudnnDestroyConvolutionDescriptor, cudnnConvolutionDescriptor_t,
             cudnnConvolutionStruct)
cudnnStatus_t cudnnSetConvolutionNdDescriptor(cudnnConvolutionDescriptor_t d, int n, const int pad[],
                                              const int stride[], const int dilation[], cudnnConvolutionMode_t mode,
                                              cudnnDataType_t type)
{
    if (n < 1 || n > 6 || mode != CUDNN_CROSS_CORRELATION) return CUDNN_STATUS_BAD_PARAM;
    d->n = n, d->compute = type;
    memcpy(d->pad, pad, sizeof(int) * (size_t)n);
    memcpy(d->stride, stride, sizeof(int) * (size_t)n);
    memcpy(d->dilation, dilation, sizeof(int) * (size_t)n);
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t d, cudnnMathType_t math)
{
    d->math = math;
    return CUDNN_STATUS_SUCCESS;
}

/* Stride 1, no dilation: out = in + 2 pad - (k - 1) on each spatial axis. */
cudnnStatus_t cudnnGetConvolutionNdForwardOutputDim(const cudnnConvolutionDescriptor_t c, const cudnnTensorDescriptor_t x,
                                                    const cudnnFilterDescriptor_t w, int nd, int out[])
{
    if (nd != x->nd || nd != w->nd || c->n != nd - 2) return CUDNN_STATUS_BAD_PARAM;
    out[0] = x->dims[0], out[1] = w->dims[0];
    for (int i = 2; i < nd; i++) out[i] = x->dims[i] + 2 * c->pad[i - 2] - (w->dims[i] - 1);
    return CUDNN_STATUS_SUCCESS;
}

static cudnnStatus_t g_heuristics_status; /* stub_cudnn_heuristics_status's */

extern "C" void stub_cudnn_heuristics_status(int status) { g_heuristics_status = (cudnnStatus_t)status; }

cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(cudnnHandle_t h, const cudnnTensorDescriptor_t x,
                                                     const cudnnFilterDescriptor_t w,
                                                     const cudnnConvolutionDescriptor_t c,
                                                     const cudnnTensorDescriptor_t y, const int requested,
                                                     int *returned, cudnnConvolutionFwdAlgoPerf_t *perf)
{
    (void)h, (void)x, (void)w, (void)c, (void)y;
    if (requested < 1) return CUDNN_STATUS_BAD_PARAM;
    if (g_heuristics_status) return g_heuristics_status;
    static const cudnnMathType_t fp32[] = {CUDNN_TENSOR_OP_MATH, CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION,
                                           CUDNN_DEFAULT_MATH, CUDNN_FMA_MATH}; /* TF32 first */
    static const cudnnMathType_t half[] = {CUDNN_TENSOR_OP_MATH, CUDNN_DEFAULT_MATH};
    const cudnnMathType_t *maths = x->type == CUDNN_DATA_FLOAT ? fp32 : half;
    int n = x->type == CUDNN_DATA_FLOAT ? 4 : 2;
    *returned = 0;
    for (int i = 0; i <= n && *returned < requested; i++) {
        cudnnConvolutionFwdAlgoPerf_t *p = &perf[(*returned)++];
        memset(p, 0, sizeof *p);
        p->algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM;
        p->status = CUDNN_STATUS_SUCCESS;
        if (i < n) {
            p->mathType = maths[i];
        } else { /* one it cannot run: its other figures mean nothing */
            p->algo = CUDNN_CONVOLUTION_FWD_ALGO_FFT;
            p->status = CUDNN_STATUS_NOT_SUPPORTED;
            p->memory = (size_t)-1;
            p->time = -1.0f;
        }
    }
    return CUDNN_STATUS_SUCCESS;
}

/* The stub's convolutions need no workspace. */
cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(cudnnHandle_t h, const cudnnTensorDescriptor_t x,
                                                      const cudnnFilterDescriptor_t w,
                                                      const cudnnConvolutionDescriptor_t c,
                                                      const cudnnTensorDescriptor_t y, cudnnConvolutionFwdAlgo_t algo,
                                                      size_t *bytes)
{
    (void)h, (void)x, (void)w, (void)c, (void)y, (void)algo;
    *bytes = 0;
    return CUDNN_STATUS_SUCCESS;
}

static int on_cpu_type(int cuda_or_cudnn_type, int is_cudnn)
{
    if (is_cudnn)
        return cuda_or_cudnn_type == CUDNN_DATA_FLOAT ? ON_CPU_F32 : cuda_or_cudnn_type == CUDNN_DATA_HALF ? ON_CPU_F16 : ON_CPU_BF16;
    return cuda_or_cudnn_type == CUDA_R_32F ? ON_CPU_F32 : cuda_or_cudnn_type == CUDA_R_16F ? ON_CPU_F16 : ON_CPU_BF16;
}

static tensor_on_cpu tensor_of(const cudnnTensorStruct *d)
{
    tensor_on_cpu t;
    memset(&t, 0, sizeof t);
    t.nd = d->nd, t.type = on_cpu_type(d->type, 1);
    for (int i = 0; i < d->nd; i++) t.dims[i] = d->dims[i], t.strides[i] = d->strides[i];
    return t;
}

/* A filter as cuDNN's NHWC format lays it out: k, the spatial dims, then c. */
static tensor_on_cpu filter_of(const cudnnFilterStruct *d)
{
    tensor_on_cpu t;
    memset(&t, 0, sizeof t);
    t.nd = d->nd, t.type = on_cpu_type(d->type, 1);
    for (int i = 0; i < d->nd; i++) t.dims[i] = d->dims[i];
    return t;
}

/* The convolution's arithmetic, from the descriptors as they are now (bias: NULL when plain). */
static action conv_action(const cudnnTensorDescriptor_t xd, const void *x, const cudnnFilterDescriptor_t wd,
                          const void *w, const cudnnConvolutionDescriptor_t c, float alpha1, const void *z, float alpha2,
                          const cudnnTensorDescriptor_t bd, const void *bias, float beta,
                          const cudnnTensorDescriptor_t yd, void *y)
{
    tensor_on_cpu xt = tensor_of(xd), wt = filter_of(wd), yt = tensor_of(yd);
    int bias_type = bd ? on_cpu_type(bd->type, 1) : ON_CPU_F32, pad[6];
    for (int i = 0; i < c->n; i++)
        if (c->stride[i] != 1 || c->dilation[i] != 1 || wd->format != CUDNN_TENSOR_NHWC) {
            if (g_violations++ < 20) fprintf(stderr, "cuda stub: a convolution it cannot compute (stride, dilation, format)\n");
            return nullptr;
        }
    memcpy(pad, c->pad, sizeof pad);
    return make_action([=] { conv_on_cpu(&xt, x, &wt, w, pad, alpha1, z, alpha2, bias, bias_type, beta, &yt, y); });
}

static void check_conv(const cudnnTensorDescriptor_t xd, const void *x, const cudnnFilterDescriptor_t wd,
                       const void *w, const cudnnConvolutionDescriptor_t c, void *ws, size_t ws_bytes,
                       const cudnnTensorDescriptor_t yd, void *y)
{
    const char *xb = (const char *)x, *yb = (const char *)y;
    if (xd->type == CUDNN_DATA_FLOAT && c->math != CUDNN_FMA_MATH)
        misuse("an fp32 convolution whose math type lets cuDNN round to TF32");
    /* the documented configurations: x, w, y of one type, fp32 accumulation (bf16 has no other) */
    if (xd->type != wd->type || yd->type != xd->type || c->compute != CUDNN_DATA_FLOAT)
        misuse("a convolution of mixed types, or not accumulating in CUDNN_DATA_FLOAT");
    if (xb < yb + tensor_span(yd) && yb < xb + tensor_span(xd))
        misuse("a convolution whose output overlaps its input (undefined in cuDNN)");
    check_device("convolution input", x, tensor_span(xd));
    check_device("convolution filter", w, filter_span(wd));
    check_device("convolution output", y, tensor_span(yd));
    if (ws_bytes) check_device("convolution workspace", ws, ws_bytes);
}

static int g_declines_left; /* stub_cudnn_decline's */
static cudnnStatus_t g_decline_status;
static long g_decline_skip; /* stub_cudnn_decline_after's */
static bool g_decline_captured_only; /* stub_cudnn_decline_captured_only's */

extern "C" int stub_cudnn_decline(int status, int n)
{
    int left = g_declines_left;
    g_declines_left = n, g_decline_status = (cudnnStatus_t)status;
    return left;
}

extern "C" void stub_cudnn_decline_after(long skip) { g_decline_skip = skip; }

extern "C" void stub_cudnn_decline_captured_only(int on) { g_decline_captured_only = on != 0; }

static bool g_decline_launch_error; /* stub_cudnn_decline_leaves_launch_error's */

extern "C" void stub_cudnn_decline_leaves_launch_error(int on) { g_decline_launch_error = on != 0; }

static size_t g_fused_workspace; /* stub_cudnn_fused_workspace's */

extern "C" void stub_cudnn_fused_workspace(size_t bytes) { g_fused_workspace = bytes; }

/* Whether this convolution call, into stream s, is one stub_cudnn_decline asked to decline. */
static bool declining(cudaStream_t s)
{
    if (g_declines_left == 0) return false;
    if (g_decline_captured_only && (is_special(s) || !s->capture)) return false;
    if (g_decline_skip > 0) return g_decline_skip--, false;
    if (g_declines_left > 0) g_declines_left--;
    if (g_decline_launch_error) g_last_error = cudaErrorLaunchOutOfResources;
    return true;
}

cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t h, const void *alpha, const cudnnTensorDescriptor_t xd,
                                      const void *x, const cudnnFilterDescriptor_t wd, const void *w,
                                      const cudnnConvolutionDescriptor_t c, cudnnConvolutionFwdAlgo_t algo, void *ws,
                                      size_t ws_bytes, const void *beta, const cudnnTensorDescriptor_t yd, void *y)
{
    (void)algo;
    if (declining(h->stream)) return g_decline_status;
    check_conv(xd, x, wd, w, c, ws, ws_bytes, yd, y);
    count(h->stream, g_calls.convolutions);
    issue(h->stream, "cudnnConvolutionForward",
          {reads(x, tensor_span(xd)), reads(w, filter_span(wd)), writes(ws, ws_bytes), writes(y, tensor_span(yd))},
          computing() ? conv_action(xd, x, wd, w, c, *(const float *)alpha, NULL, 0.0f, NULL, NULL,
                                    *(const float *)beta, yd, y)
                      : nullptr);
    return CUDNN_STATUS_SUCCESS;
}

/* The fused call's z: y's shape and type, and either y itself (PyTorch's use: z = y) or apart from it;
 * apart from x. Its bias: [1, K, 1, ...] in y's type (cuDNN's ConvBiasAct: "the size of the bias
 * tensor should be [1, K, 1, 1]"). */
static void check_fused_operands(const cudnnTensorDescriptor_t xd, const void *x, const cudnnFilterDescriptor_t wd,
                                 const cudnnTensorDescriptor_t zd, const void *z, const cudnnTensorDescriptor_t bd,
                                 const cudnnTensorDescriptor_t yd, const void *y)
{
    const char *zb = (const char *)z, *yb = (const char *)y, *xb = (const char *)x;
    int same = zd->nd == yd->nd && zd->type == yd->type && bd->nd == yd->nd && bd->type == yd->type;
    for (int i = 0; same && i < yd->nd; i++)
        same = zd->dims[i] == yd->dims[i] && zd->strides[i] == yd->strides[i] && bd->dims[i] == (i == 1 ? wd->dims[0] : 1);
    if (!same) misuse("a fused convolution whose z is not shaped as y, or whose bias is not [1, K, 1, ...] of y's type");
    if (zb != yb && zb < yb + tensor_span(yd) && yb < zb + tensor_span(zd))
        misuse("a fused convolution whose z partly overlaps y");
    if (zb < xb + tensor_span(xd) && xb < zb + tensor_span(zd)) misuse("a fused convolution whose z overlaps x");
}

cudnnStatus_t cudnnConvolutionBiasActivationForward(
    cudnnHandle_t h, const void *alpha1, const cudnnTensorDescriptor_t xd, const void *x,
    const cudnnFilterDescriptor_t wd, const void *w, const cudnnConvolutionDescriptor_t c,
    cudnnConvolutionFwdAlgo_t algo, void *ws, size_t ws_bytes, const void *alpha2, const cudnnTensorDescriptor_t zd,
    const void *z, const cudnnTensorDescriptor_t bd, const void *bias, const cudnnActivationDescriptor_t act,
    const cudnnTensorDescriptor_t yd, void *y)
{
    if (act->mode != CUDNN_ACTIVATION_IDENTITY && act->mode != CUDNN_ACTIVATION_RELU) return CUDNN_STATUS_NOT_SUPPORTED;
    if (algo != CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM) return CUDNN_STATUS_NOT_SUPPORTED; /* as cuDNN's */
    check_fused_operands(xd, x, wd, zd, z, bd, yd, y);
    if (declining(h->stream)) return g_decline_status;
    if (ws_bytes < g_fused_workspace) return CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT;
    check_conv(xd, x, wd, w, c, ws, ws_bytes, yd, y);
    check_device("convolution sum input", z, tensor_span(zd));
    check_device("convolution bias", bias, tensor_span(bd));
    count(h->stream, g_calls.convolutions);
    issue(h->stream, "cudnnConvolutionBiasActivationForward",
          {reads(x, tensor_span(xd)), reads(w, filter_span(wd)), reads(z, tensor_span(zd)), writes(ws, ws_bytes),
           writes(y, tensor_span(yd))},
          computing() ? conv_action(xd, x, wd, w, c, *(const float *)alpha1, z, *(const float *)alpha2, bd, bias,
                                    0.0f, yd, y)
                      : nullptr);
    return CUDNN_STATUS_SUCCESS;
}

CUDNN_OBJECT(cudnnCreateActivationDescriptor, cudnnDestroyActivationDescriptor, cudnnActivationDescriptor_t,
             cudnnActivationStruct)
cudnnStatus_t cudnnSetActivationDescriptor(cudnnActivationDescriptor_t d, cudnnActivationMode_t mode,
                                           cudnnNanPropagation_t nan, double coef)
{
    (void)nan, (void)coef;
    d->mode = mode;
    return CUDNN_STATUS_SUCCESS;
}

/* ---- cuDNN's graph API ---------------------------------------------------------------------------
 * A descriptor is a bag of attributes, finalized once. The heuristics offer a configuration of each of
 * STUB_ENGINES, in that order: one that compiles its kernels at run time, one that converts its inputs
 * down, one that reduces in a precision below fp32, two on the tensor cores (TF32 in fp32), the first
 * of them needing stub_cudnn_plan_workspace's bytes of workspace (its runs counted: wide_plan_runs),
 * and one that needs none of these. A careful caller passes over the first three in every precision
 * and the tensor cores' in fp32: running them is a misuse, as is a plan of a graph
 * other than a convolution (+ a pointwise add of a [1, K, 1, ...] bias after it), a plan run with more
 * workspace than its buffer, and destroying a plan while a CUDA graph holds its kernels. A plan runs
 * as the legacy convolution does here: the same checks, declines and arithmetic. */
struct stub_engine {
    int64_t index;
    bool compiles, down_converts, tensor_core, wide, reduces_low = false;
};
static const stub_engine STUB_ENGINES[] = {
    {41, true, false, false, false}, {9, false, true, false, false}, {15, false, false, false, false, true},
    {7, false, false, true, true},
    {12, false, false, true, false}, {3, false, false, false, false}};

static int g_fusions_compile;      /* stub_cudnn_fusions_compile's */
static int64_t g_plan_workspace;   /* stub_cudnn_plan_workspace's */

extern "C" void stub_cudnn_fusions_compile(int on) { g_fusions_compile = on; }
extern "C" void stub_cudnn_plan_workspace(int64_t bytes) { g_plan_workspace = bytes; }

struct backend_attr {
    cudnnBackendAttributeType_t type;
    int64_t n;
    std::vector<char> bytes;
};

struct backend_desc {
    cudnnBackendDescriptorType_t type;
    std::map<int, backend_attr> attrs;
    bool finalized = false;
    int engine = -1;                /* an ENGINECFG or ENGINE the heuristics filled: its STUB_ENGINES entry */
    backend_desc *graph = nullptr; /* an ENGINECFG's operation graph */
    std::shared_ptr<char> held = std::make_shared<char>(); /* a plan's: copied into each graph holding its kernels */
};

static size_t attr_bytes(cudnnBackendAttributeType_t t)
{
    switch (t) {
    case CUDNN_TYPE_INT64: case CUDNN_TYPE_DOUBLE: return 8;
    case CUDNN_TYPE_BOOLEAN: return sizeof(bool);
    case CUDNN_TYPE_HANDLE: case CUDNN_TYPE_BACKEND_DESCRIPTOR: case CUDNN_TYPE_VOID_PTR: return sizeof(void *);
    default: return 4; /* float and the enums */
    }
}

static backend_desc *desc_of(cudnnBackendDescriptor_t d) { return (backend_desc *)d; }

/* Attribute name of d as n values of T (n 0 and NULL where d has none). */
extern "C++" { /* a template, in the C API's extern "C" block */
template <typename T> static const T *attr(const backend_desc *d, int name, int64_t *n = nullptr)
{
    auto it = d->attrs.find(name);
    if (n) *n = it == d->attrs.end() ? 0 : it->second.n;
    return it == d->attrs.end() ? nullptr : (const T *)it->second.bytes.data();
}
}

cudnnStatus_t cudnnBackendCreateDescriptor(cudnnBackendDescriptorType_t type, cudnnBackendDescriptor_t *d)
{
    if (!d) return CUDNN_STATUS_BAD_PARAM_NULL_POINTER;
    if (create_fails(d)) return CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED;
    backend_desc *b = make_handle<backend_desc>();
    b->type = type;
    *d = b;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnBackendDestroyDescriptor(cudnnBackendDescriptor_t d)
{
    if (d && (uintptr_t)d != FAILED_HANDLE && desc_of(d)->held.use_count() > 1)
        misuse("a graph-API plan destroyed while a CUDA graph holds its kernels");
    drop_handle(desc_of(d));
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnBackendSetAttribute(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name,
                                       cudnnBackendAttributeType_t type, int64_t n, const void *values)
{
    backend_desc *b = desc_of(d);
    if (!values || n < 0) return CUDNN_STATUS_BAD_PARAM_NULL_POINTER;
    if (b->finalized) return CUDNN_STATUS_BAD_PARAM;
    if (type == CUDNN_TYPE_HANDLE && !*(void *const *)values) return CUDNN_STATUS_BAD_PARAM_NULL_POINTER;
    backend_attr &a = b->attrs[name];
    a.type = type, a.n = n;
    a.bytes.assign((const char *)values, (const char *)values + (size_t)n * attr_bytes(type));
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnBackendFinalize(cudnnBackendDescriptor_t d)
{
    backend_desc *b = desc_of(d);
    if (b->finalized) return CUDNN_STATUS_BAD_PARAM;
    if (b->type == CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR) {
        backend_desc *const *cfg = attr<backend_desc *>(b, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG);
        if (!attr<void *>(b, CUDNN_ATTR_EXECUTION_PLAN_HANDLE) || !cfg || (*cfg)->engine < 0) return CUDNN_STATUS_BAD_PARAM;
    }
    if (b->type == CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR && !attr<void *>(b, CUDNN_ATTR_OPERATIONGRAPH_HANDLE))
        return CUDNN_STATUS_BAD_PARAM;
    b->finalized = true;
    return CUDNN_STATUS_SUCCESS;
}

/* The type of each attribute the backend reads (-1: one it does not). */
static cudnnBackendAttributeType_t read_type(cudnnBackendAttributeName_t name)
{
    switch (name) {
    case CUDNN_ATTR_ENGINEHEUR_RESULTS: case CUDNN_ATTR_ENGINECFG_ENGINE: return CUDNN_TYPE_BACKEND_DESCRIPTOR;
    case CUDNN_ATTR_ENGINE_GLOBAL_INDEX: case CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE: return CUDNN_TYPE_INT64;
    case CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE: return CUDNN_TYPE_BEHAVIOR_NOTE;
    case CUDNN_ATTR_ENGINE_NUMERICAL_NOTE: return CUDNN_TYPE_NUMERICAL_NOTE;
    default: return (cudnnBackendAttributeType_t)-1;
    }
}

/* How many operations graph has. */
static int64_t graph_ops(const backend_desc *graph)
{
    int64_t n = 0;
    attr<backend_desc *>(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, &n);
    return n;
}

/* Puts n values of T into the caller's array (room for `room`). */
extern "C++" { /* a template, in the C API's extern "C" block */
template <typename T> static cudnnStatus_t give(const T *values, int64_t n, int64_t room, int64_t *count, void *out)
{
    if (room < n) n = room;
    if (count) *count = n;
    memcpy(out, values, sizeof(T) * (size_t)n);
    return CUDNN_STATUS_SUCCESS;
}
}

/* The workspace plan needs: its engine's. */
static int64_t plan_workspace(const backend_desc *plan)
{
    const backend_desc *cfg = *attr<backend_desc *>(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG);
    return STUB_ENGINES[cfg->engine].wide ? g_plan_workspace : 0;
}

cudnnStatus_t cudnnBackendGetAttribute(const cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name,
                                       cudnnBackendAttributeType_t type, int64_t room, int64_t *count, void *out)
{
    const backend_desc *b = desc_of(d);
    const int n_engines = (int)(sizeof STUB_ENGINES / sizeof *STUB_ENGINES);
    if (!out) return CUDNN_STATUS_BAD_PARAM_NULL_POINTER;
    if (read_type(name) == (cudnnBackendAttributeType_t)-1) return CUDNN_STATUS_NOT_SUPPORTED; /* not asked */
    if (type != read_type(name)) {
        misuse("a graph-API attribute read as a type it does not have");
        return CUDNN_STATUS_BAD_PARAM;
    }
    if (!b->finalized && name != CUDNN_ATTR_ENGINECFG_ENGINE) return CUDNN_STATUS_BAD_PARAM;
    if (name == CUDNN_ATTR_ENGINEHEUR_RESULTS) { /* into the caller's ENGINECFG descriptors */
        backend_desc *const *graph = attr<backend_desc *>(b, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH);
        int64_t offered = g_fusions_compile && graph && graph_ops(*graph) > 1 ? 1 : n_engines;
        int64_t n = room < offered ? room : offered;
        for (int64_t i = 0; i < n; i++) {
            backend_desc *cfg = desc_of(((cudnnBackendDescriptor_t *)out)[i]);
            cfg->engine = (int)i, cfg->graph = graph ? *graph : nullptr, cfg->finalized = true;
        }
        if (count) *count = n;
        return CUDNN_STATUS_SUCCESS;
    }
    if (name == CUDNN_ATTR_ENGINECFG_ENGINE) {
        backend_desc *engine = desc_of(*(cudnnBackendDescriptor_t *)out);
        engine->engine = b->engine, engine->finalized = true;
        if (count) *count = 1;
        return b->engine < 0 ? CUDNN_STATUS_BAD_PARAM : CUDNN_STATUS_SUCCESS;
    }
    if (b->engine >= 0 && b->type == CUDNN_BACKEND_ENGINE_DESCRIPTOR) {
        const stub_engine &e = STUB_ENGINES[b->engine];
        cudnnBackendBehaviorNote_t compiles = CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION;
        cudnnBackendNumericalNote_t numerics[3];
        int n_numerics = 0;
        if (e.tensor_core) numerics[n_numerics++] = CUDNN_NUMERICAL_NOTE_TENSOR_CORE;
        if (e.down_converts) numerics[n_numerics++] = CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS;
        if (e.reduces_low) numerics[n_numerics++] = CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION;
        if (name == CUDNN_ATTR_ENGINE_GLOBAL_INDEX) return give(&e.index, 1, room, count, out);
        if (name == CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE) return give(&compiles, e.compiles, room, count, out);
        if (name == CUDNN_ATTR_ENGINE_NUMERICAL_NOTE) return give(numerics, n_numerics, room, count, out);
    }
    if (name == CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE) {
        int64_t bytes = plan_workspace(b);
        return give(&bytes, 1, room, count, out);
    }
    return CUDNN_STATUS_NOT_SUPPORTED; /* an engine's note asked of another descriptor */
}

/* A tensor descriptor of the graph as the legacy one (a filter's dims alone: its layout is checked). */
static cudnnTensorStruct legacy_tensor(const backend_desc *t)
{
    cudnnTensorStruct l;
    int64_t nd = 0;
    const int64_t *dims = attr<int64_t>(t, CUDNN_ATTR_TENSOR_DIMENSIONS, &nd), *strides = attr<int64_t>(t, CUDNN_ATTR_TENSOR_STRIDES);
    memset(&l, 0, sizeof l);
    l.nd = (int)nd, l.type = *attr<cudnnDataType_t>(t, CUDNN_ATTR_TENSOR_DATA_TYPE);
    for (int i = 0; i < l.nd; i++) l.dims[i] = (int)dims[i], l.strides[i] = (int)strides[i];
    return l;
}

/* Whether a filter's strides are those of the packed KTRSC layout the backend keeps its weights in. */
static bool packed_filter(const cudnnTensorStruct &w)
{
    int64_t stride = w.dims[1]; /* channels innermost, then the spatial dims, then the outputs */
    if (w.strides[1] != 1) return false;
    for (int i = w.nd - 1; i >= 2; i--) {
        if (w.strides[i] != stride) return false;
        stride *= w.dims[i];
    }
    return w.strides[0] == stride;
}

static const void *pack_pointer(const backend_desc *pack, const backend_desc *tensor)
{
    int64_t n = 0;
    const int64_t *uids = attr<int64_t>(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, &n);
    void *const *pointers = attr<void *>(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS);
    int64_t uid = *attr<int64_t>(tensor, CUDNN_ATTR_TENSOR_UNIQUE_ID);
    for (int64_t i = 0; i < n; i++)
        if (uids[i] == uid) return pointers[i];
    misuse("a graph's tensor without a pointer in the variant pack");
    return nullptr;
}

static bool aligned_for(const backend_desc *tensor, const void *p)
{
    const int64_t *alignment = attr<int64_t>(tensor, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT);
    return !alignment || (uintptr_t)p % (uintptr_t)*alignment == 0;
}

extern "C++" { /* a template, in the C API's extern "C" block */
template <typename T> static T one_attr(const backend_desc *d, int name)
{
    const T *v = attr<T>(d, name);
    return v ? *v : T();
}
}

cudnnStatus_t cudnnBackendExecute(cudnnHandle_t h, cudnnBackendDescriptor_t plan_d, cudnnBackendDescriptor_t pack_d)
{
    const backend_desc *plan = desc_of(plan_d), *pack = desc_of(pack_d);
    const backend_desc *cfg = *attr<backend_desc *>(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG);
    const stub_engine &engine = STUB_ENGINES[cfg->engine];
    int64_t n_ops = 0;
    backend_desc *const *ops = attr<backend_desc *>(cfg->graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, &n_ops);
    const backend_desc *conv_op = ops[0], *bias_op = n_ops > 1 ? ops[1] : nullptr;
    const backend_desc *xd = one_attr<backend_desc *>(conv_op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X);
    const backend_desc *wd = one_attr<backend_desc *>(conv_op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W);
    const backend_desc *yd = one_attr<backend_desc *>(conv_op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y);
    const backend_desc *cd = one_attr<backend_desc *>(conv_op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC);
    const backend_desc *bd = bias_op ? one_attr<backend_desc *>(bias_op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC) : nullptr;
    float alpha = one_attr<float>(conv_op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA);
    float beta = one_attr<float>(conv_op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA);
    if (!pack->finalized || !plan->finalized) misuse("a graph-API plan or variant pack run unfinalized");
    if (engine.compiles) misuse("a graph-API engine that compiles kernels at run time ran");
    if (engine.down_converts) misuse("a graph-API engine that converts its inputs down ran");
    if (engine.reduces_low) misuse("a graph-API engine that reduces in a precision below fp32 ran");
    if (n_ops > 2 || conv_op->type != CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR ||
        (bias_op && (bias_op->type != CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR ||
                     one_attr<backend_desc *>(bias_op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC) != yd ||
                     !one_attr<bool>(yd, CUDNN_ATTR_TENSOR_IS_VIRTUAL))))
        misuse("a graph-API graph other than a convolution, and a pointwise add of its sum and a bias");
    if (bias_op) yd = one_attr<backend_desc *>(bias_op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC);
    cudnnTensorStruct x = legacy_tensor(xd), w = legacy_tensor(wd), y = legacy_tensor(yd), bias;
    cudnnFilterStruct filter;
    cudnnConvolutionStruct conv;
    int64_t spatial = 0;
    const int64_t *pre = attr<int64_t>(cd, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, &spatial);
    const int64_t *post = attr<int64_t>(cd, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS);
    const void *xp = pack_pointer(pack, xd), *wp = pack_pointer(pack, wd), *bp = bd ? pack_pointer(pack, bd) : nullptr;
    void *yp = (void *)pack_pointer(pack, yd), *ws = one_attr<void *>(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE);
    filter.nd = w.nd, filter.type = w.type, filter.format = CUDNN_TENSOR_NHWC;
    memcpy(filter.dims, w.dims, sizeof filter.dims);
    if (!packed_filter(w)) misuse("a graph-API filter not laid out as the packed KTRSC weights");
    memset(&conv, 0, sizeof conv);
    conv.n = (int)spatial, conv.compute = one_attr<cudnnDataType_t>(cd, CUDNN_ATTR_CONVOLUTION_COMP_TYPE);
    conv.math = engine.tensor_core ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH; /* check_conv: TF32 in fp32 */
    for (int i = 0; i < conv.n; i++) {
        conv.pad[i] = (int)pre[i], conv.stride[i] = conv.dilation[i] = 1;
        if (post[i] != pre[i]) misuse("a graph-API convolution padded unevenly");
    }
    if (bd) bias = legacy_tensor(bd);
    if (!aligned_for(xd, xp) || !aligned_for(wd, wp) || !aligned_for(yd, yp) || (bd && !aligned_for(bd, bp)))
        misuse("a graph-API pointer not aligned as its tensor says");
    if (declining(h->stream)) return g_decline_status;
    check_conv(&x, xp, &filter, wp, &conv, ws, 0, &y, yp);
    check_device("a graph-API plan's workspace", ws, (size_t)plan_workspace(plan));
    if (bd) check_device("convolution bias", bp, tensor_span(&bias));
    count(h->stream, g_calls.convolutions);
    count(h->stream, g_calls.plan_runs);
    if (bd) count(h->stream, g_calls.bias_plan_runs);
    if (engine.wide) count(h->stream, g_calls.wide_plan_runs);
    issue(h->stream, "cudnnBackendExecute",
          {reads(xp, tensor_span(&x)), reads(wp, filter_span(&filter)), reads(bp, bd ? tensor_span(&bias) : 0),
           writes(yp, tensor_span(&y))},
          computing() ? conv_action(&x, xp, &filter, wp, &conv, alpha, NULL, 0.0f, bd ? &bias : NULL, bp, beta, &y, yp)
                      : nullptr,
          plan->held);
    return CUDNN_STATUS_SUCCESS;
}

/* ---- cuBLAS --------------------------------------------------------------------------------- */

LIBRARY_OBJECT(cublasStatus_t, CUBLAS_STATUS_SUCCESS, CUBLAS_STATUS_ALLOC_FAILED, cublasCreate_v2, cublasDestroy_v2,
               cublasHandle_t, cublasContext, need_context())

/* cuBLAS docs: cublasSetStream "unconditionally resets the cuBLAS library workspace back to the
 * default workspace pool" (cuBLAS's own device memory, outside the plan's arena). */
cublasStatus_t cublasSetStream_v2(cublasHandle_t h, cudaStream_t s)
{
    h->stream = s;
    h->ws = nullptr, h->ws_bytes = 0;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t h, void *ws, size_t bytes)
{
    if (bytes) check_device("cuBLAS workspace", ws, bytes);
    if ((uintptr_t)ws % 256) return CUBLAS_STATUS_INVALID_VALUE; /* cuBLAS asks for 256-byte alignment */
    h->ws = ws, h->ws_bytes = bytes;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t mode)
{
    h->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetProperty(libraryPropertyType type, int *value)
{
    *value = type == MAJOR_VERSION ? 13 : type == MINOR_VERSION ? 1 : 0;
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusString(cublasStatus_t s) { return s == CUBLAS_STATUS_SUCCESS ? "success" : "cuBLAS stub error"; }

static size_t blas_type_bytes(cudaDataType t) { return t == CUDA_R_32F ? 4 : 2; }

/* The bytes a column-major rows x cols matrix with leading dimension ld spans. */
static size_t matrix_span(int rows, int cols, int ld, cudaDataType t)
{
    return rows && cols ? ((size_t)(cols - 1) * (size_t)ld + (size_t)rows) * blas_type_bytes(t) : 0;
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void *alpha, const void *A, cudaDataType at, int lda, const void *B, cudaDataType bt,
                            int ldb, const void *beta, void *C, cudaDataType ct, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t algo)
{
    (void)algo;
    /* cublasGemmEx's documented argument rules (CUBLAS_STATUS_INVALID_VALUE otherwise): m, n, k >= 0,
     * each leading dimension at least the rows of the matrix as stored; A and B of one type, C of
     * theirs or fp32 under CUBLAS_COMPUTE_32F (the backend's fp32 sums; fp32 inputs: no TF32) */
    int a_rows = ta == CUBLAS_OP_N ? m : k, b_rows = tb == CUBLAS_OP_N ? k : n;
    if (m < 0 || n < 0 || k < 0 || lda < (a_rows > 1 ? a_rows : 1) || ldb < (b_rows > 1 ? b_rows : 1) ||
        ldc < (m > 1 ? m : 1)) {
        misuse("cublasGemmEx: a negative size or a leading dimension under the rows (CUBLAS_STATUS_INVALID_VALUE)");
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (at != bt || (ct != at && ct != CUDA_R_32F) || compute != CUBLAS_COMPUTE_32F)
        misuse("cublasGemmEx: types or compute type other than A = B, C = A or fp32, CUBLAS_COMPUTE_32F");
    if (at == CUDA_R_32F && (h->math & ~CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION) == CUBLAS_TF32_TENSOR_OP_MATH)
        misuse("an fp32 GEMM on a handle whose math mode lets cuBLAS round to TF32");
    /* its workspace: the one cublasSetWorkspace gave since the last cublasSetStream, still allocated;
     * without one cuBLAS takes its default pool's memory, which a captured GEMM must not */
    if (h->ws) check_device("cuBLAS workspace (at a GEMM)", h->ws, h->ws_bytes);
    else if (!is_special(h->stream) && h->stream->capture)
        misuse("a captured cublasGemmEx with no workspace of the caller's (cublasSetStream dropped it, or none was set)");
    size_t a_span = ta == CUBLAS_OP_N ? matrix_span(m, k, lda, at) : matrix_span(k, m, lda, at);
    size_t b_span = tb == CUBLAS_OP_N ? matrix_span(k, n, ldb, bt) : matrix_span(n, k, ldb, bt);
    check_device("GEMM A", A, a_span);
    check_device("GEMM B", B, b_span);
    check_device("GEMM C", C, matrix_span(m, n, ldc, ct));
    count(h->stream, g_calls.gemms);
    float al = *(const float *)alpha, be = *(const float *)beta;
    int ta_ = ta != CUBLAS_OP_N, tb_ = tb != CUBLAS_OP_N, at_ = on_cpu_type(at, 0), bt_ = on_cpu_type(bt, 0),
        ct_ = on_cpu_type(ct, 0);
    issue(h->stream, "cublasGemmEx", {reads(A, a_span), reads(B, b_span), writes(C, matrix_span(m, n, ldc, ct)),
                                      writes(h->ws, h->ws ? h->ws_bytes : 0)},
          computing() ? make_action([=] { gemm_on_cpu(ta_, tb_, m, n, k, al, A, at_, lda, B, bt_, ldb, be, C, ct_, ldc); })
                      : nullptr);
    return CUBLAS_STATUS_SUCCESS;
}

} /* extern "C" */
