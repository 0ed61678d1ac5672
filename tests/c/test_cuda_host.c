/* The CUDA backend's host side, run without a GPU: the driver decodes through the CUDA tables with
 * tests/c/cuda_stub/ standing in for the CUDA runtime, cuDNN and cuBLAS (device memory is host
 * memory, kernels and convolutions do nothing, unless WANVIDEO_STUB_COMPUTE=2: then they compute on
 * the CPU, and each decode of a small frame is compared with the CPU backend's, in fp32, bf16 and bf16
 * with step graphs). Built with the sanitizers by tests/c/cuda_host.sh.
 * It checks what needs no arithmetic: every plan this decoder makes (untiled, tiles with the trunk
 * ending at the attention or at the first upsample, a budget, end_frame, step graphs, the direct
 * kernel, the three precisions) decodes to the end without an error; every convolution, copy and
 * GEMM the backend issues stays inside one of the plan's arena buffers (each tile segment's x, y and
 * t apart) or one allocation; an allocation that fails anywhere fails cleanly; a trunk output that
 * cannot be pinned still decodes; the pinned memory kept between calls stays within its limit; a
 * fault of the runtime (a launch refused, a kernel faulting, a graph capture invalidated) fails the
 * decode cleanly or, in a capture, turns graphs off; and nothing is left allocated once the models
 * are gone. The numbers themselves are checked where a GPU is (tests/c/test_backend_ops.cu,
 * tests/test_cuda.py). */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>
#include <cudnn.h>

#include "cuda_stub/cuda_stub.h"
#include "test_util.h"
#include "wv_cuda.h"
#include "wv_internal.h"

typedef struct {
    const char *name;
    int T, h, w, tile, end_frame;
    int budget_percent; /* of the untiled plan's arena (0: no budget) */
    wv_output_mode output;
} run;

/* The plan's arena buffers to the stub, the tile scratch as each segment's x, y and t: an access
 * must stay inside one of them. */
static void hand_layout_to_stub(const wv_plan *p, size_t act_bytes)
{
    size_t offsets[WV_MAX_BUFFERS + 3 * WV_MAX_SEGMENTS], sizes[WV_MAX_BUFFERS + 3 * WV_MAX_SEGMENTS];
    size_t scratch = p->buffers[WV_BUF_TILE_SCRATCH].offset;
    int n = 0;
    for (int i = 0; i < p->n_buffers; i++)
        if (i != WV_BUF_TILE_SCRATCH) offsets[n] = p->buffers[i].offset, sizes[n++] = p->buffers[i].bytes;
    for (int s = 0; s < p->n_segments; s++) {
        size_t xy = wv_align_up((size_t)p->seg[s].xy_elems * act_bytes), base = scratch + p->seg[s].scratch_offset;
        size_t t_bytes = (size_t)p->seg[s].t_elems * act_bytes;
        offsets[n] = base, sizes[n++] = xy;
        offsets[n] = base + xy, sizes[n++] = xy;
        offsets[n] = base + 2 * xy, sizes[n++] = t_bytes;
    }
    stub_arena_layout(p->arena_bytes, n, offsets, sizes);
}

/* With the stub computing (WANVIDEO_STUB_COMPUTE=2): the decoder on the CPU backend, whose output
 * each decode's must match. */
static const wv_model *g_reference;

/* out (the plan's frames, float32 or uint8) against the CPU backend's decode of the same latents:
 * within tol, on the [0, 1] image (and half a step of 1/255 more for bytes). */
static void compare_with_cpu(const run *r, const wv_plan *p, const float *lat, const void *out, double tol)
{
    wv_options o = {0, 0, r->end_frame, WV_OUT_UNIT, 0, 0};
    size_t n = (size_t)p->frames_out * (size_t)p->H * (size_t)p->W * 3;
    float *ref = (float *)malloc(sizeof(float) * n);
    wv_plan q;
    wv_stats st;
    wv_error err;
    double worst = 0.0;
    wv_status s = wv_plan_make(&q, g_reference, r->T, r->h, r->w, &o, &err);
    if (!s) s = decode_planned(g_reference, &q, lat, &o, ref, &st, &err);
    CHECK(s == WV_OK);
    if (r->output == WV_OUT_U8) tol += 0.5 / 255;
    for (size_t i = 0; !s && i < n; i++) {
        double got = r->output == WV_OUT_U8 ? ((const unsigned char *)out)[i] / 255.0 : ((const float *)out)[i];
        double d = fabs((double)ref[i] - got);
        if (d != d) d = INFINITY; /* a NaN fails */
        if (d > worst) worst = d;
    }
    if (!s) printf("%-4s %s: max |CUDA on the stub - CPU| %.3g (tolerance %.3g)\n", worst <= tol ? "ok" : "FAIL", r->name,
                   worst, tol);
    CHECK(!s && worst <= tol);
    if (!s) wv_plan_free(&q);
    free(ref);
}

/* The stub's counts since `before` (a stub_counts() taken then). */
static stub_calls calls_since(stub_calls before)
{
    stub_calls now = stub_counts();
    now.kernels -= before.kernels, now.convolutions -= before.convolutions, now.gemms -= before.gemms;
    now.copies -= before.copies, now.graph_launches -= before.graph_launches;
    now.graph_captures -= before.graph_captures, now.plan_runs -= before.plan_runs;
    now.bias_plan_runs -= before.bias_plan_runs, now.wide_plan_runs -= before.wide_plan_runs;
    now.spinning_waits -= before.spinning_waits, now.device_seconds -= before.device_seconds;
    return now;
}

/* Whether decode() times each op (wv_options.profile). */
static int g_profiled;

/* One decode of seeded latents [4][T][h][w] as the run says; the plan must hold exactly. */
static wv_status decode(const wv_model *m, const run *r, wv_error *err)
{
    float *lat = rand_floats((size_t)4 * r->T * r->h * r->w);
    void *out = NULL;
    wv_options o = {r->tile, r->tile, r->end_frame, r->output, 0, g_profiled};
    wv_plan p;
    wv_stats st;
    wv_status s;
    if (r->budget_percent && !(s = wv_plan_make(&p, m, r->T, r->h, r->w, &o, err))) {
        o.max_bytes = p.arena_bytes / 100 * (size_t)r->budget_percent;
        wv_plan_free(&p);
    }
    s = wv_plan_make(&p, m, r->T, r->h, r->w, &o, err);
    if (!s && r->budget_percent) CHECK(p.n_tiles > 1 && p.arena_bytes <= o.max_bytes);
    if (!s) hand_layout_to_stub(&p, m->backend->act_bytes);
    if (!s) out = malloc(wv_output_item_bytes(o.output) * (size_t)p.frames_out * (size_t)p.H * (size_t)p.W * 3);
    if (!s) s = decode_planned(m, &p, lat, &o, out, &st, err);
    if (!s) CHECK(st.steps == (int64_t)r->T * (1 + p.n_tiles));
    if (!s && g_reference) compare_with_cpu(r, &p, lat, out, m->backend->act_dtype == WV_F32 ? 1e-4 : 0.05);
    wv_plan_free(&p);
    free(lat), free(out);
    return s;
}

static const run RUNS[] = {
    {"untiled", 3, 5, 6, 0, 0, 0, WV_OUT_UNIT},
    {"tiles, trunk to the first upsample", 3, 5, 6, 40, 0, 0, WV_OUT_UNIT},
    {"small tiles of a larger frame, trunk to the attention", 2, 28, 28, 40, 0, 0, WV_OUT_UNIT},
    {"end frame in tiles", 4, 5, 6, 40, 1, 0, WV_OUT_UNIT},
    {"end frame in small tiles of a larger frame", 3, 28, 28, 40, 1, 0, WV_OUT_UNIT}, /* staging over the scores */
    {"end frame, the last output under a trunk cache", 2, 4, 18, 40, 1, 0, WV_OUT_UNIT},
    {"within 80% of the untiled arena", 3, 9, 11, 0, 0, 80, WV_OUT_UNIT},
    {"uint8 frames, end frame in tiles", 3, 5, 6, 40, 1, 0, WV_OUT_U8},
};

/* WANVIDEO_CUDA_GRAPH_API as a test found it, for the test to set it for the models it makes (read
 * when a model's context is made) and put back after: legacy_convolutions() for a test of the legacy
 * calls' own ways (what they decline, what cuDNN's heuristics refuse), graph_api_convolutions() for one
 * of the graph API's. */
static char *set_graph_api(const char *value)
{
    const char *now = getenv("WANVIDEO_CUDA_GRAPH_API");
    char *was = now ? strdup(now) : NULL;
    setenv("WANVIDEO_CUDA_GRAPH_API", value, 1);
    return was;
}

static char *legacy_convolutions(void) { return set_graph_api("0"); }
static char *graph_api_convolutions(void) { return set_graph_api("1"); }

static void restore_graph_api(char *was)
{
    if (was) setenv("WANVIDEO_CUDA_GRAPH_API", was, 1);
    else unsetenv("WANVIDEO_CUDA_GRAPH_API");
    free(was);
}

/* A bf16 model of the weights on the default GPU (the backend's environment settings read now). */
static wv_status build_bf16(wv_model *m, const weight_set *ws, wv_error *err)
{
    return wv_model_build(m, wv_cuda_backends()->by_dtype[WV_BF16], -1, ws->views, ws->n, err);
}

static void decode_all(const wv_model *m, const char *setting)
{
    for (size_t i = 0; i < sizeof RUNS / sizeof *RUNS; i++) {
        if (g_reference && RUNS[i].h * RUNS[i].w > 100) continue; /* the stub's loops are slow */
        wv_error err = {WV_OK, ""};
        wv_status s = decode(m, &RUNS[i], &err);
        if (s) fprintf(stderr, "%s, %s: %s\n", setting, RUNS[i].name, err.msg);
        CHECK(s == WV_OK);
    }
}

/* Device allocations failing one after another, from the first (the arena) on: each decode fails
 * cleanly, the device's memory said to be out (a pinned buffer refused falls back to pageable memory),
 * until there are none left to fail, and the next one works. A budget of device memory too small for
 * any tiling is the device's too. */
static void fail_allocations(const wv_model *m)
{
    const run *r = &RUNS[1];
    for (int n = 1; n <= 4; n++) {
        wv_error err = {WV_OK, ""};
        m->backend->fail_nth_alloc(n);
        wv_status s = decode(m, r, &err);
        m->backend->fail_nth_alloc(0);
        CHECK(s == WV_OK || s == WV_ERR_NOMEM_DEVICE);
        CHECK(n > 1 || s == WV_ERR_NOMEM_DEVICE);
    }
    {
        wv_error err = {WV_OK, ""};
        CHECK(decode(m, r, &err) == WV_OK);
    }
    {
        wv_error err = {WV_OK, ""};
        wv_options o = {0, 0, 0, WV_OUT_UNIT, 1000, 0};
        wv_plan p;
        CHECK(wv_plan_make(&p, m, r->T, r->h, r->w, &o, &err) == WV_ERR_NOMEM_DEVICE && strstr(err.msg, "budget"));
    }
}

/* A model on the CUDA table of dt (the backend's environment settings read now): every run, and
 * where asked, allocations failing. */
static void with_model(const weight_set *ws, wv_dtype dt, const char *setting, int fail_allocs)
{
    wv_model m;
    wv_error err = {WV_OK, ""};
    const wv_backend *be = wv_cuda_backends()->by_dtype[dt];
    wv_status s = wv_model_build(&m, be, -1, ws->views, ws->n, &err);
    if (s) fprintf(stderr, "%s: model: %s\n", setting, err.msg);
    CHECK(s == WV_OK);
    if (s) return;
    decode_all(&m, setting);
    if (fail_allocs && !g_reference) fail_allocations(&m);
    wv_model_free(&m);
}

/* Pinned host memory between calls: kept for the next call within WANVIDEO_CUDA_KEEP_PINNED_MIB (read
 * when a model's context is made), given back as a call ends past it; a decode works either way. */
static void pinned_memory_kept_within_its_limit(const weight_set *ws)
{
    static const char *const limits[] = {NULL, "0"};
    for (int i = 0; i < 2; i++) {
        wv_model m;
        wv_error err = {WV_OK, ""};
        if (limits[i])
            setenv("WANVIDEO_CUDA_KEEP_PINNED_MIB", limits[i], 1);
        else
            unsetenv("WANVIDEO_CUDA_KEEP_PINNED_MIB"); /* the default, whatever the caller's environment */
        CHECK(build_bf16(&m, ws, &err) == WV_OK);
        unsetenv("WANVIDEO_CUDA_KEEP_PINNED_MIB");
        for (int call = 0; call < 2; call++) { /* tiles: the trunk output's block and the output stagings */
            CHECK(decode(&m, &RUNS[1], &err) == WV_OK);
            if (limits[i]) CHECK(stub_pinned_bytes() == 0);
            else CHECK(stub_pinned_bytes() > 0);
        }
        wv_model_free(&m);
        CHECK(stub_pinned_bytes() == 0);
    }
}

/* Where the system will not pin the trunk output, it waits in pageable memory: the decode works (and,
 * computing, matches the CPU's). */
static void trunk_output_unpinnable(const weight_set *ws)
{
    wv_model m;
    wv_error err = {WV_OK, ""};
    CHECK(build_bf16(&m, ws, &err) == WV_OK);
    size_t stagings_only;
    stub_fail_nth_host_alloc(1); /* a fresh model's first: the trunk output's, before begin's stagings */
    CHECK(decode(&m, &RUNS[1], &err) == WV_OK);
    CHECK(stub_fail_nth_host_alloc(0) == 0);
    stagings_only = stub_pinned_bytes(); /* the pageable block went back with the call */
    CHECK(stagings_only > 0);
    CHECK(decode(&m, &RUNS[1], &err) == WV_OK);
    CHECK(stub_pinned_bytes() > stagings_only); /* the next call pinned it, and keeps it */
    wv_model_free(&m);
}

/* Where the system will not pin the output stagings either, they are pageable for that call: the
 * decode works, none of it stays, and the next call pins them again. */
static void stagings_unpinnable(const weight_set *ws)
{
    wv_model m;
    wv_error err = {WV_OK, ""};
    CHECK(build_bf16(&m, ws, &err) == WV_OK);
    stub_fail_nth_host_alloc(2); /* after the trunk output's block: the first staging */
    CHECK(decode(&m, &RUNS[1], &err) == WV_OK);
    CHECK(stub_fail_nth_host_alloc(0) == 0);
    size_t without_one = stub_pinned_bytes(); /* the block and two stagings */
    stub_fail_nth_host_alloc(-1);             /* every pin fails from now */
    CHECK(decode(&m, &RUNS[1], &err) == WV_OK); /* the pageable staging went back; pinning again failed */
    CHECK(stub_pinned_bytes() == without_one);
    stub_fail_nth_host_alloc(0);
    CHECK(decode(&m, &RUNS[1], &err) == WV_OK);
    CHECK(stub_pinned_bytes() > without_one); /* pinned again, and kept */
    wv_model_free(&m);
    CHECK(stub_pinned_bytes() == 0);
}

/* A convolution candidate cuDNN declines is not asked again with the same workspace, whether it was
 * short of workspace or refused the shape, and a decline touches that shape alone: where the first
 * shape's every attempt declines (its two candidates, each fused and then plain: three calls where the
 * first refusal unfuses the shape, four where each is short of workspace), that shape runs on the
 * direct kernel from then on, in this call and the next (which makes as many cuDNN calls as this
 * one), while the others still run through cuDNN; and the decodes work, also where an engine that
 * failed internally left its failed launch as the runtime's last error (not the next kernel's). */
static void declined_convolutions_not_retried(const weight_set *ws)
{
    static const struct {
        cudnnStatus_t status;
        int attempts, failed_launch;
    } cases[] = {{CUDNN_STATUS_NOT_SUPPORTED, 3, 0},
                 {CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT, 4, 0},
                 {CUDNN_STATUS_INTERNAL_ERROR, 3, 1}};
    char *graph_api = legacy_convolutions();
    for (int i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++) {
        wv_model m;
        wv_error err = {WV_OK, ""};
        long calls[3];
        CHECK(build_bf16(&m, ws, &err) == WV_OK);
        for (int call = 0; call < 3; call++) {
            long before = stub_counts().convolutions;
            if (call == 1) stub_cudnn_decline((int)cases[i].status, cases[i].attempts);
            stub_cudnn_decline_leaves_launch_error(cases[i].failed_launch);
            CHECK(decode(&m, &RUNS[0], &err) == WV_OK);
            calls[call] = stub_counts().convolutions - before;
        }
        stub_cudnn_decline_leaves_launch_error(0);
        CHECK(stub_cudnn_decline(0, 0) == 0);
        CHECK(calls[1] < calls[0] && calls[1] > 0 && calls[2] == calls[1]);
        wv_model_free(&m);
    }
    restore_graph_api(graph_api);
}

/* With WANVIDEO_CUDA_GRAPH_API=1 every convolution runs by a plan of the graph API (the stub's heuristics
 * offer first the engines a careful caller passes over, STUB_ENGINES, and report any of them run); a
 * plan cuDNN declines is not asked again: the decode's first call (its first conv, with a bias)
 * declined by the fused plan and then by the plain one runs on the legacy path, and so does its shape
 * from then on; the decodes run as many convolutions, fewer of them by plans, and the declined plans
 * are destroyed when their call ends. */
static void graph_api_declines_fall_back(const weight_set *ws)
{
    char *graph_api = graph_api_convolutions();
    wv_model m;
    wv_error err = {WV_OK, ""};
    long plans[3], convs[3], descriptors[3];
    CHECK(build_bf16(&m, ws, &err) == WV_OK);
    for (int call = 0; call < 3; call++) {
        stub_calls before = stub_counts();
        if (call == 1) stub_cudnn_decline(CUDNN_STATUS_NOT_SUPPORTED, 2);
        CHECK(decode(&m, &RUNS[0], &err) == WV_OK);
        plans[call] = stub_counts().plan_runs - before.plan_runs;
        convs[call] = stub_counts().convolutions - before.convolutions;
        descriptors[call] = stub_live_backend_descriptors();
    }
    CHECK(stub_cudnn_decline(0, 0) == 0);
    /* the two declined plans (and what they were made of) went as the call ended; no plan is made again */
    CHECK(descriptors[1] < descriptors[0] && descriptors[2] == descriptors[1]);
    CHECK(plans[0] == convs[0] && plans[1] < plans[0] && plans[2] == plans[1]);
    CHECK(convs[1] == convs[0] && convs[2] == convs[0]);
    wv_model_free(&m);
    restore_graph_api(graph_api);
}

/* Where cuDNN has no plan that suits for a convolution with its bias (the stub's heuristics then offer
 * such graphs only an engine that compiles kernels), the plain plans still run every convolution the
 * fused ones ran, and our kernel adds the bias: a kernel more for each bias a fused plan added. */
static void graph_api_adds_a_bias_no_plan_takes(const weight_set *ws)
{
    char *graph_api = graph_api_convolutions();
    long plans[2], biased[2], kernels[2];
    for (int compiles = 0; compiles < 2; compiles++) {
        wv_model m;
        wv_error err = {WV_OK, ""};
        stub_calls before;
        stub_cudnn_fusions_compile(compiles);
        CHECK(build_bf16(&m, ws, &err) == WV_OK);
        before = stub_counts();
        CHECK(decode(&m, &RUNS[0], &err) == WV_OK);
        plans[compiles] = stub_counts().plan_runs - before.plan_runs;
        biased[compiles] = stub_counts().bias_plan_runs - before.bias_plan_runs;
        kernels[compiles] = stub_counts().kernels - before.kernels;
        wv_model_free(&m);
    }
    stub_cudnn_fusions_compile(0);
    CHECK(plans[0] > 0 && biased[0] > 0 && biased[1] == 0);
    CHECK(plans[1] == plans[0] && kernels[1] - kernels[0] == biased[0]);
    restore_graph_api(graph_api);
}

/* The plan a shape keeps fits the call's workspace: where the heuristics' best engine that suits needs a
 * byte more than the call has (the stub checks a plan's workspace against the arena's buffer), the next
 * one runs every convolution; where it needs just the call's, it runs them. */
static void graph_api_plans_fit_the_call_workspace(const weight_set *ws)
{
    char *graph_api = graph_api_convolutions();
    for (int more = 0; more < 2; more++) {
        wv_model m;
        wv_error err = {WV_OK, ""};
        wv_options o = {0, 0, 0, WV_OUT_UNIT, 0, 0};
        wv_plan p;
        stub_calls before;
        CHECK(build_bf16(&m, ws, &err) == WV_OK);
        CHECK(wv_plan_make(&p, &m, RUNS[0].T, RUNS[0].h, RUNS[0].w, &o, &err) == WV_OK);
        stub_cudnn_plan_workspace((int64_t)p.buffers[WV_BUF_WORKSPACE].bytes + more);
        wv_plan_free(&p);
        before = stub_counts();
        CHECK(decode(&m, &RUNS[0], &err) == WV_OK);
        CHECK(stub_counts().plan_runs - before.plan_runs == stub_counts().convolutions - before.convolutions);
        /* the heuristics' first engine that suits and fits runs them, not a later one */
        CHECK(stub_counts().wide_plan_runs - before.wide_plan_runs ==
              (more ? 0 : stub_counts().plan_runs - before.plan_runs));
        wv_model_free(&m);
    }
    stub_cudnn_plan_workspace(0);
    restore_graph_api(graph_api);
}

/* One convolution outside a decode (a 3x3 conv of 16 -> 16 channels, with its bias, on a 5x7 frame in
 * bf16), for what no decode of this decoder makes: its own context, weights and buffers. */
typedef struct {
    const wv_backend *be;
    void *ctx;
    wv_conv cv;
    wv_grid g;
} lone_conv;

static void *lone_upload(lone_conv *l, const float *host, size_t n, size_t bytes)
{
    wv_error err = {WV_OK, ""};
    void *p = NULL;
    CHECK(l->be->alloc(l->ctx, bytes, &p, &err) == WV_OK);
    CHECK(l->be->upload(l->ctx, p, host, n, &err) == WV_OK);
    return p;
}

static void lone_conv_make(lone_conv *l)
{
    wv_error err = {WV_OK, ""};
    wv_conv cv = {NULL, NULL, 16, 16, 1, 3, 3, 0, -1, 0, 0};
    size_t n_packed;
    float *w = rand_floats((size_t)cv.cout * cv.cin * 9), *bias = rand_floats((size_t)cv.cout), *packed;
    l->be = wv_cuda_backends()->by_dtype[WV_BF16];
    l->g = (wv_grid){5, 7, 1};
    CHECK(l->be->ctx_create(l->be, -1, &l->ctx, &err) == WV_OK); /* the graph-API setting read now */
    n_packed = (size_t)l->be->packed_weight_elems(&cv);
    packed = (float *)calloc(n_packed, sizeof(float));
    l->be->pack_conv_weight(w, &cv, packed);
    cv.weight = lone_upload(l, packed, n_packed, n_packed * l->be->param_bytes);
    cv.bias = lone_upload(l, bias, (size_t)cv.cout, (size_t)cv.cout * l->be->param_bytes);
    l->cv = cv;
    free(w), free(bias), free(packed);
}

/* The convolution in a call of workspace_bytes, its input (x_off) or output (y_off) that many bytes past
 * the start of its buffer; the stub's counts of the call. */
static stub_calls lone_conv_call(lone_conv *l, size_t workspace_bytes, size_t x_off, size_t y_off)
{
    wv_error err = {WV_OK, ""};
    float latent = 0.0f;
    wv_view lat = {0};
    wv_call call = {0};
    size_t frame = (size_t)wv_grid_positions(l->g) * (size_t)l->cv.cin * l->be->act_bytes;
    void *x = NULL, *y = NULL;
    stub_calls ran;
    lat.data = &latent, lat.ndim = 4, lat.dtype = WV_F32;
    for (int d = 0; d < 4; d++) lat.shape[d] = 1, lat.strides[d] = sizeof latent;
    call.latents = &lat;
    call.workspace_bytes = workspace_bytes;
    CHECK(l->be->alloc(l->ctx, workspace_bytes, &call.workspace, &err) == WV_OK);
    CHECK(l->be->alloc(l->ctx, frame + x_off, &x, &err) == WV_OK);
    CHECK(l->be->alloc(l->ctx, frame + y_off, &y, &err) == WV_OK);
    CHECK(l->be->begin(l->ctx, &call, &err) == WV_OK);
    l->be->zero(l->ctx, x, frame + x_off);
    {
        const void *frames[WV_MAX_TAPS] = {(char *)x + x_off};
        stub_calls before = stub_counts();
        l->be->conv(l->ctx, &l->cv, l->g, frames, 0, 0, (char *)y + y_off, 0);
        ran = calls_since(before);
    }
    l->be->finish(l->ctx);
    l->be->release(l->ctx, x), l->be->release(l->ctx, y), l->be->release(l->ctx, call.workspace);
    return ran;
}

static void lone_conv_free(lone_conv *l)
{
    l->be->release(l->ctx, l->cv.weight), l->be->release(l->ctx, l->cv.bias);
    l->be->ctx_destroy(l->ctx);
}

/* The lone convolution through the graph API in three calls of these workspaces, the heuristics' first
 * engine that suits needing PLAN_WORKSPACE (the next one none); the stub's counts of each call. */
enum { PLAN_WORKSPACE = 1 << 20 };
static void lone_conv_in_workspaces(const size_t workspaces[3], stub_calls ran[3])
{
    char *graph_api = graph_api_convolutions();
    lone_conv l;
    lone_conv_make(&l);
    stub_cudnn_plan_workspace(PLAN_WORKSPACE);
    for (int i = 0; i < 3; i++) ran[i] = lone_conv_call(&l, workspaces[i], 0, 0);
    stub_cudnn_plan_workspace(0);
    lone_conv_free(&l);
    restore_graph_api(graph_api);
}

/* A plan kept from a call with more workspace than this one (the heuristics' first engine that suits
 * needing all of that call's) does not run in this one: the convolution runs without it, and the
 * stub reports no plan short of its workspace; a call with the workspace again runs it again. */
static void graph_api_plan_kept_from_a_larger_workspace_waits(void)
{
    const size_t workspaces[3] = {PLAN_WORKSPACE, PLAN_WORKSPACE - 256, PLAN_WORKSPACE};
    stub_calls ran[3];
    lone_conv_in_workspaces(workspaces, ran);
    for (int i = 0; i < 3; i++) CHECK(ran[i].convolutions == 1);
    CHECK(ran[0].wide_plan_runs == 1 && ran[1].wide_plan_runs == 0 && ran[2].wide_plan_runs == 1);
}

/* A shape first met in a call whose workspace the heuristics' first engine that suits does not fit
 * (its next one runs) looks again in a call that fits it: that engine runs there and after. */
static void graph_api_plan_made_in_a_smaller_workspace_is_made_again_in_a_larger(void)
{
    const size_t workspaces[3] = {PLAN_WORKSPACE - 256, PLAN_WORKSPACE, 64 * PLAN_WORKSPACE};
    stub_calls ran[3];
    lone_conv_in_workspaces(workspaces, ran);
    for (int i = 0; i < 3; i++) CHECK(ran[i].convolutions == 1 && ran[i].plan_runs == 1);
    CHECK(ran[0].wide_plan_runs == 0 && ran[1].wide_plan_runs == 1 && ran[2].wide_plan_runs == 1);
}

/* A plan's tensors are described GRAPH_ALIGNMENT-aligned (16 bytes): an input or output 8 bytes off runs
 * the convolution without a plan (the stub reports a plan run at a pointer its tensor's alignment does
 * not allow), and marks nothing: the aligned call after it runs by the plan again. */
static void graph_api_misaligned_pointers_run_without_a_plan(void)
{
    char *graph_api = graph_api_convolutions();
    lone_conv l;
    lone_conv_make(&l);
    for (int which = 0; which < 2; which++) {
        stub_calls off = lone_conv_call(&l, 1 << 20, which == 0 ? 8 : 0, which == 1 ? 8 : 0);
        stub_calls aligned = lone_conv_call(&l, 1 << 20, 0, 0);
        CHECK(off.convolutions == 1 && off.plan_runs == 0);
        CHECK(aligned.convolutions == 1 && aligned.plan_runs == 1);
    }
    lone_conv_free(&l);
    restore_graph_api(graph_api);
}

/* Creates failing one after another through a decode's first shapes (the legacy descriptors, then
 * the graph-API plans): a plan whose descriptors could not all be made leaves its shape to the legacy
 * calls (the decode works); a legacy descriptor or a call's variant pack that could not be made fails
 * the decode as out of host memory, and the next decode works; what a failed create left in its
 * handle is never destroyed (the stub reports it). */
static void graph_api_failed_creates(const weight_set *ws)
{
    char *graph_api = graph_api_convolutions();
    int packs_failed = 0;
    for (int n = 1; n <= 64; n++) {
        wv_model m;
        wv_error err = {WV_OK, ""};
        wv_status d;
        CHECK(build_bf16(&m, ws, &err) == WV_OK);
        stub_fail_nth_create(n);
        d = decode(&m, &RUNS[1], &err);
        CHECK(d == WV_OK || d == WV_ERR_NOMEM); /* out of memory: a shape's legacy descriptors, or a pack */
        packs_failed += d == WV_ERR_NOMEM && strstr(err.msg, "(graph API)");
        stub_fail_nth_create(0);
        if (d != WV_OK) CHECK(decode(&m, &RUNS[1], &err) == WV_OK);
        wv_model_free(&m);
    }
    CHECK(packs_failed > 0);
    restore_graph_api(graph_api);
}

/* A misaligned pointer is the buffers' (a ring slot's offset), not the shape's: a candidate declining
 * for it is neither refused nor unfused, so the next decode runs as the first did, with as many
 * convolutions and kernels (no bias passes of an unfused shape), and the decode it declined in works. */
static void misaligned_buffers_mark_no_shape(const weight_set *ws)
{
    wv_model m;
    wv_error err = {WV_OK, ""};
    stub_calls at[4];
    CHECK(build_bf16(&m, ws, &err) == WV_OK);
    for (int call = 0; call < 3; call++) {
        at[call] = stub_counts();
        if (call == 1) stub_cudnn_decline((int)CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER, 3);
        CHECK(decode(&m, &RUNS[0], &err) == WV_OK);
    }
    at[3] = stub_counts();
    CHECK(stub_cudnn_decline(0, 0) == 0);
    CHECK(at[3].convolutions - at[2].convolutions == at[1].convolutions - at[0].convolutions);
    CHECK(at[3].kernels - at[2].kernels == at[1].kernels - at[0].kernels);
    wv_model_free(&m);
}

/* A model kept for days and fed ever new frame sizes (a ComfyUI server) keeps the convolution shapes
 * its recent decodes ran, not every size it met: a call that begins past WV_CUDA_KEEP_SHAPES forgets
 * those the last call did not run (and their plans), so no more than that and one call's live past a
 * call; a size decoded again at once finds all its shapes kept (adds none); every decode works. */
static void shapes_of_many_frame_sizes_stay_bounded(const weight_set *ws)
{
    wv_model m;
    wv_error err = {WV_OK, ""};
    long base = stub_live_convolution_descriptors(), most_added = 0, most_live = 0;
    int forgot = 0;
    CHECK(build_bf16(&m, ws, &err) == WV_OK);
    for (int i = 0; i < 96; i++) { /* each size with 1 latent frame, then with 2 (its shapes and more) */
        run r = {"a frame size of its own", 1 + i % 2, 2 + i / 2 % 6, 2 + i / 12, 0, 0, 0, WV_OUT_UNIT};
        long before = stub_live_convolution_descriptors() - base, after, made;
        CHECK(decode(&m, &r, &err) == WV_OK);
        after = stub_live_convolution_descriptors() - base;
        if (after >= before && after - before > most_added) most_added = after - before;
        forgot += after < before;
        CHECK(after >= before || before > WV_CUDA_KEEP_SHAPES); /* forgets only past the bound */
        if (after > most_live) most_live = after;
        made = stub_convolution_descriptors_made();
        CHECK(decode(&m, &r, &err) == WV_OK); /* finds every shape: adds none (may forget others) */
        CHECK(stub_live_convolution_descriptors() - base <= after);
        CHECK(stub_convolution_descriptors_made() == made); /* none forgotten and made again */
        CHECK(stub_live_convolution_descriptors() - base == after || after > WV_CUDA_KEEP_SHAPES);
        forgot += stub_live_convolution_descriptors() - base < after;
    }
    printf("shapes: at most %ld live, %ld added by a call, forgotten %d times\n", most_live, most_added, forgot);
    CHECK(forgot > 0 && most_live <= WV_CUDA_KEEP_SHAPES + most_added);
    wv_model_free(&m);
    CHECK(stub_live_convolution_descriptors() == base);
}

/* Within WV_CUDA_KEEP_SHAPES a context forgets no shape: a size decoded again after another finds
 * every shape of its first decode (makes no convolution descriptor). */
static void shapes_within_the_bound_kept(const weight_set *ws)
{
    wv_model m;
    wv_error err = {WV_OK, ""};
    run a = {"one size", 1, 3, 4, 0, 0, 0, WV_OUT_UNIT}, b = {"another", 1, 5, 3, 0, 0, 0, WV_OUT_UNIT};
    long made;
    CHECK(build_bf16(&m, ws, &err) == WV_OK);
    CHECK(decode(&m, &a, &err) == WV_OK);
    CHECK(decode(&m, &b, &err) == WV_OK);
    made = stub_convolution_descriptors_made();
    CHECK(decode(&m, &a, &err) == WV_OK);
    CHECK(stub_convolution_descriptors_made() == made);
    wv_model_free(&m);
}

/* Tiles of 9 latent frames: a tile's steps repeat, so step graphs capture them and replay them. */
static const run LONG_TILES = {"tiles of 9 frames: steps repeat", 9, 5, 6, 40, 0, 0, WV_OUT_UNIT};

/* A bf16 model with step graphs on. */
static void build_with_graphs(wv_model *m, const weight_set *ws)
{
    wv_error err = {WV_OK, ""};
    setenv("WANVIDEO_CUDA_GRAPHS", "1", 1); /* read when a model's context is made */
    CHECK(build_bf16(m, ws, &err) == WV_OK);
    unsetenv("WANVIDEO_CUDA_GRAPHS");
}

/* Step graphs over many tiles of many frames: a tile's steps cycle through a few lists (three or six:
 * CYCLE frames make whole cycles of either), so once a decode is long enough to have met each of them
 * twice, frames added to it capture no graph more and each of their steps (the trunk's and every
 * tile's) launches its list as one graph; though the decode captures more graphs than
 * WV_CUDA_GRAPH_EXECS, no more than that many are live at once. */
static void step_graphs_reused_within_their_bound(const weight_set *ws)
{
    enum { CYCLE = 6, FRAMES = 13 };
    wv_model m;
    wv_error err = {WV_OK, ""};
    wv_options o = {40, 40, 0, WV_OUT_UNIT, 0, 0};
    wv_plan p;
    stub_calls ran[2];
    build_with_graphs(&m, ws);
    CHECK(wv_plan_make(&p, &m, FRAMES, 12, 12, &o, &err) == WV_OK);
    for (int i = 0; i < 2; i++) {
        run r = {"many tiles of many frames", FRAMES + CYCLE * i, 12, 12, 40, 0, 0, WV_OUT_UNIT};
        stub_calls before = stub_counts();
        stub_graph_execs_most();
        CHECK(decode(&m, &r, &err) == WV_OK);
        ran[i] = calls_since(before);
        CHECK(ran[i].graph_captures > WV_CUDA_GRAPH_EXECS && stub_graph_execs_most() == WV_CUDA_GRAPH_EXECS);
    }
    CHECK(ran[1].graph_captures == ran[0].graph_captures);
    CHECK(ran[1].graph_launches - ran[0].graph_launches == (long)CYCLE * (1 + p.n_tiles));
    wv_plan_free(&p);
    wv_model_free(&m);
}

/* A profiled decode waits for each op to time it, so its lists hold one op each, too short to be
 * worth a graph: with step graphs on, it captures and launches none (and decodes as without them). */
static void profiled_decodes_capture_no_graph(const weight_set *ws)
{
    wv_model m;
    wv_error err = {WV_OK, ""};
    stub_calls before;
    build_with_graphs(&m, ws);
    g_profiled = 1;
    before = stub_counts();
    CHECK(decode(&m, &LONG_TILES, &err) == WV_OK);
    CHECK(stub_counts().graph_captures == before.graph_captures);
    CHECK(stub_counts().graph_launches == before.graph_launches);
    g_profiled = 0;
    wv_model_free(&m);
}

/* A plan cuDNN declines half way through a decode, after step graphs captured its kernels, stays until
 * the call's graphs are gone (the stub reports a plan destroyed while a graph holds it); the decode
 * finishes without it. */
static void graph_api_declined_plan_outlives_the_call_graphs(const weight_set *ws)
{
    char *graph_api = graph_api_convolutions();
    wv_model m;
    wv_error err = {WV_OK, ""};
    stub_calls before = stub_counts();
    long convs;
    build_with_graphs(&m, ws);
    CHECK(decode(&m, &LONG_TILES, &err) == WV_OK);
    convs = stub_counts().convolutions - before.convolutions;
    wv_model_free(&m);
    build_with_graphs(&m, ws); /* its shapes new: the decode makes the same calls */
    stub_cudnn_decline(CUDNN_STATUS_NOT_SUPPORTED, 2);
    stub_cudnn_decline_after(convs / 2);
    before = stub_counts();
    CHECK(decode(&m, &LONG_TILES, &err) == WV_OK);
    CHECK(stub_cudnn_decline(0, 0) == 0 && stub_counts().graph_launches > before.graph_launches);
    wv_model_free(&m);
    restore_graph_api(graph_api);
}

/* A bias-fused convolution short of the plan's workspace where the plain one runs: the candidate
 * runs unfused in that workspace without asking again, so step graphs still capture (a decline while
 * capturing abandons the capture and turns graphs off for the rest of the decode). */
static void fused_call_short_of_workspace_keeps_step_graphs(const weight_set *ws)
{
    wv_model m;
    wv_error err = {WV_OK, ""};
    long launches;
    build_with_graphs(&m, ws);
    stub_cudnn_fused_workspace((size_t)-1);
    launches = stub_counts().graph_launches;
    CHECK(decode(&m, &LONG_TILES, &err) == WV_OK);
    CHECK(stub_counts().graph_launches > launches);
    stub_cudnn_fused_workspace(0);
    wv_model_free(&m);
}

/* With step graphs, a step's work is launched before its progress callback runs, so the GPU works
 * while the caller's code (a progress bar, a preview) does: by the last callback the decode's whole
 * work has been issued, as without graphs. */
static stub_calls g_at_callback;

static int note_issued_work(void *user, int64_t done, int64_t total)
{
    (void)user, (void)done, (void)total;
    g_at_callback = stub_counts();
    return 0;
}

static long device_work(stub_calls k) { return k.kernels + k.convolutions + k.gemms + k.graph_launches; }

static void steps_launched_before_their_callbacks(const weight_set *ws)
{
    wv_model m;
    wv_error err = {WV_OK, ""};
    long launches = stub_counts().graph_launches;
    build_with_graphs(&m, ws);
    g_progress = note_issued_work;
    CHECK(decode(&m, &LONG_TILES, &err) == WV_OK);
    g_progress = NULL;
    CHECK(stub_counts().graph_launches > launches);
    CHECK(device_work(stub_counts()) == device_work(g_at_callback));
    wv_model_free(&m);
}

/* A shape cuDNN refuses (its heuristics declining it) runs on the direct kernel; a cuDNN that fails
 * every shape alike (a sub-library it cannot load or lacks) fails the decode, naming the status,
 * instead of running every convolution on the direct kernel; a later decode, cuDNN mended, works;
 * and the direct kernel asked for everywhere gets around a broken cuDNN. */
static void cudnn_refusals_and_broken_installations(const weight_set *ws)
{
    static const struct {
        cudnnStatus_t status;
        wv_status expect;
    } cases[] = {{CUDNN_STATUS_NOT_SUPPORTED_SHAPE, WV_OK},
                 {CUDNN_STATUS_BAD_PARAM, WV_OK},
#if CUDNN_VERSION >= 90200 /* the status came in 9.2 */
                 {CUDNN_STATUS_SUBLIBRARY_LOADING_FAILED, WV_ERR_BACKEND},
#endif
                 {CUDNN_STATUS_DEPRECATED, WV_OK},
                 {CUDNN_STATUS_SUBLIBRARY_VERSION_MISMATCH, WV_ERR_BACKEND},
                 {CUDNN_STATUS_NOT_SUPPORTED_SUBLIBRARY_UNAVAILABLE, WV_ERR_BACKEND}};
    char *graph_api = legacy_convolutions();
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        wv_model m;
        wv_error err = {WV_OK, ""};
        long before;
        CHECK(build_bf16(&m, ws, &err) == WV_OK);
        stub_cudnn_heuristics_status((int)cases[i].status);
        before = stub_counts().convolutions;
        CHECK(decode(&m, &RUNS[0], &err) == cases[i].expect);
        stub_cudnn_heuristics_status(0);
        if (cases[i].expect == WV_OK) {
            CHECK(stub_counts().convolutions == before); /* none through cuDNN */
        } else {
            CHECK(strstr(err.msg, "cuDNN error in describing a convolution") != NULL);
            CHECK(strstr(err.msg, cudnnGetErrorString(cases[i].status)) != NULL);
            err.code = WV_OK;
            CHECK(decode(&m, &RUNS[0], &err) == WV_OK);
        }
        wv_model_free(&m);
    }
    { /* WANVIDEO_CUDA_DIRECT_CONV=1 asks nothing of cuDNN's convolutions: a way around a broken one */
        wv_model m;
        wv_error err = {WV_OK, ""};
        setenv("WANVIDEO_CUDA_DIRECT_CONV", "1", 1); /* read when a model's context is made */
        CHECK(build_bf16(&m, ws, &err) == WV_OK);
        unsetenv("WANVIDEO_CUDA_DIRECT_CONV");
        stub_cudnn_heuristics_status((int)CUDNN_STATUS_NOT_SUPPORTED_SUBLIBRARY_UNAVAILABLE);
        CHECK(decode(&m, &RUNS[0], &err) == WV_OK);
        stub_cudnn_heuristics_status(0);
        wv_model_free(&m);
    }
    restore_graph_api(graph_api);
}

/* The host waits for the GPU step by step (the output stagings' turns) asleep, not spinning on a CPU
 * core: a decode of six times the steps makes no more spinning waits than a short one (those left,
 * once per call: the latent upload and its check, and the end of the call). */
static void step_waits_do_not_spin(const weight_set *ws)
{
    /* the long one first: its pinned trunk output then serves the short one as it is */
    static const run lengths[] = {{"12 latent frames in tiles", 12, 5, 6, 40, 0, 0, WV_OUT_UNIT},
                                  {"2 latent frames in tiles", 2, 5, 6, 40, 0, 0, WV_OUT_UNIT}};
    wv_model m;
    wv_error err = {WV_OK, ""};
    long spins[2];
    CHECK(build_bf16(&m, ws, &err) == WV_OK);
    for (int i = 0; i < 2; i++) {
        long before = stub_counts().spinning_waits;
        CHECK(decode(&m, &lengths[i], &err) == WV_OK);
        spins[i] = stub_counts().spinning_waits - before;
    }
    CHECK(spins[1] == spins[0]);
    wv_model_free(&m);
}

/* The device and pinned memory held now (the models' weights among it). */
static size_t held_now(void) { return stub_device_bytes() + stub_pinned_bytes(); }

/* A decode of r with the fault armed (it must strike): it fails as a backend error whose message
 * names the call and, for a fault that leaves the GPU unusable, says to restart; what it held is given
 * back; while the GPU stays unusable, the read of its free memory (the planner's first call) fails, a
 * decode fails at its first allocation and a model's build fails, each saying to restart too; and a
 * decode once it is usable again (a new process) works. */
static void decode_through_fault(const wv_model *m, const weight_set *ws, const run *r, int (*disarm)(void), int lost,
                                 size_t held)
{
    wv_error err = {WV_OK, ""};
    wv_status s = decode(m, r, &err);
    if (s != WV_ERR_BACKEND) fprintf(stderr, "a decode through a fault returned %d: %s\n", (int)s, err.msg);
    CHECK(s == WV_ERR_BACKEND && strstr(err.msg, "CUDA error in ") && strstr(err.msg, "CUDA stub error"));
    CHECK(!strstr(err.msg, "restart it") == !lost);
    CHECK(held_now() == held);
    if (lost) {
        wv_model other;
        size_t free_b, total_b;
        char why[256] = "";
        CHECK(wv_cuda_mem_info(0, &free_b, &total_b, why, sizeof why) == -1 && strstr(why, "restart it"));
        err.code = WV_OK;
        CHECK(decode(m, r, &err) == WV_ERR_BACKEND && strstr(err.msg, "CUDA error in cuda") &&
              strstr(err.msg, "restart it"));
        CHECK(held_now() == held);
        CHECK(build_bf16(&other, ws, &err) == WV_ERR_BACKEND && strstr(err.msg, "restart it"));
        CHECK(held_now() == held);
    }
    CHECK(disarm() == 0);
    CHECK(decode(m, r, &err) == WV_OK);
}

static int disarm_launch(void) { return stub_fail_nth_launch(0, 0, 0); }
static int disarm_kernel(void) { return stub_fault_nth_kernel(0, 0); }

/* Faults of the runtime partway through a decode in tiles, at its first kernel launch, a third, two
 * thirds of the way and its last: the launch refused (out of resources), or the kernel faulting as it
 * runs (an illegal address, found at the next wait). Each fails the decode cleanly
 * (decode_through_fault): no kernel's fault goes unseen before the call says it worked. */
static void runtime_faults_fail_cleanly(const weight_set *ws)
{
    const run *r = &RUNS[1];
    wv_model m;
    wv_error err = {WV_OK, ""};
    stub_calls before, after;
    size_t held;
    long launches;
    CHECK(build_bf16(&m, ws, &err) == WV_OK);
    CHECK(decode(&m, r, &err) == WV_OK); /* shapes found, pinned memory kept: as the faulted ones find them */
    held = held_now();
    before = stub_counts();
    CHECK(decode(&m, r, &err) == WV_OK);
    after = stub_counts();
    launches = after.kernels - before.kernels;
    CHECK(launches > 3 && held_now() == held);
    for (long k = 0; k < 4; k++) {
        int nth = (int)(k ? launches * k / 3 : 1);
        stub_fail_nth_launch(nth, cudaErrorLaunchOutOfResources, 0);
        decode_through_fault(&m, ws, r, disarm_launch, 0, held);
        stub_fault_nth_kernel(nth, cudaErrorIllegalAddress);
        decode_through_fault(&m, ws, r, disarm_kernel, 1, held);
    }
    wv_model_free(&m);
}

/* Step graphs whose capture fails: the runtime invalidating it at its end, or a kernel launch refused
 * inside it. The step runs op by op instead, graphs stay off for the rest of the decode (none
 * launched in it), the next decode captures and launches them again, and the decodes work
 * (computing: they match the CPU's). */
static void failed_captures_turn_graphs_off(const weight_set *ws)
{
    for (int how = 0; how < 2; how++) {
        wv_model m;
        wv_error err = {WV_OK, ""};
        long launches;
        build_with_graphs(&m, ws);
        launches = stub_counts().graph_launches;
        if (how == 0) stub_fail_nth_capture(1);
        else stub_fail_nth_launch(2, cudaErrorLaunchOutOfResources, 1);
        CHECK(decode(&m, &LONG_TILES, &err) == WV_OK);
        CHECK((how == 0 ? stub_fail_nth_capture(0) : disarm_launch()) == 0);
        CHECK(stub_counts().graph_launches == launches);
        CHECK(decode(&m, &LONG_TILES, &err) == WV_OK);
        CHECK(stub_counts().graph_launches > launches);
        wv_model_free(&m);
    }
}

/* A convolution cuDNN declines only while a step is captured, by a graph-API plan or a legacy call,
 * fails the capture and nothing more: graphs are off for the rest of the decode, as where the runtime
 * invalidates a capture, and the decode runs as many convolutions and kernels outside captures, as
 * many of the convolutions by plans (the plan or candidate declined while captured is not marked
 * declined: a bias-fused one would leave its bias to a kernel); the next decode captures again. */
static void declines_while_captured_mark_nothing(const weight_set *ws)
{
    for (int api = 0; api < 2; api++) {
        char *graph_api = set_graph_api(api ? "1" : "0");
        stub_calls ran[2];
        for (int declined = 0; declined < 2; declined++) {
            wv_model m;
            wv_error err = {WV_OK, ""};
            stub_calls before;
            build_with_graphs(&m, ws);
            if (declined) {
                stub_cudnn_decline_captured_only(1);
                stub_cudnn_decline(CUDNN_STATUS_NOT_SUPPORTED, 1);
            } else {
                stub_fail_nth_capture(1);
            }
            before = stub_counts();
            CHECK(decode(&m, &LONG_TILES, &err) == WV_OK);
            CHECK((declined ? stub_cudnn_decline(0, 0) : stub_fail_nth_capture(0)) == 0);
            stub_cudnn_decline_captured_only(0);
            ran[declined] = calls_since(before);
            CHECK(ran[declined].graph_launches == 0);
            before = stub_counts();
            CHECK(decode(&m, &LONG_TILES, &err) == WV_OK);
            CHECK(stub_counts().graph_launches > before.graph_launches);
            wv_model_free(&m);
        }
        CHECK(ran[1].convolutions == ran[0].convolutions && ran[1].plan_runs == ran[0].plan_runs &&
              ran[1].kernels == ran[0].kernels);
        CHECK(api ? ran[0].plan_runs > 0 : ran[0].plan_runs == 0);
        restore_graph_api(graph_api);
    }
}

/* Creates failing one after another from the first on (the streams, events and library handles of a
 * model's context, then the descriptors of its convolutions as a decode meets them): the model's build
 * or the decode fails cleanly, memory (the device's, or the host's for a descriptor) said to be out,
 * what the failed create left in its handle never destroyed (the stub reports it), and a decode after
 * a failed one works; until no create is left to fail. */
static void failed_creates(const weight_set *ws)
{
    char *graph_api = legacy_convolutions(); /* a variant pack a convolution: a decode for each of thousands */
    int n = 1, left = 0;
    for (; left == 0; n++) {
        wv_model m;
        wv_error err = {WV_OK, ""};
        wv_status s;
        stub_fail_nth_create(n);
        s = build_bf16(&m, ws, &err);
        if (s == WV_OK) {
            wv_status d = decode(&m, &RUNS[1], &err);
            CHECK(d == WV_OK || d == WV_ERR_NOMEM);
            if (d != WV_OK) CHECK(decode(&m, &RUNS[1], &err) == WV_OK);
            wv_model_free(&m);
        } else {
            CHECK((s == WV_ERR_NOMEM_DEVICE || s == WV_ERR_NOMEM) && strstr(err.msg, "error in "));
        }
        left = stub_fail_nth_create(0);
    }
    CHECK(n > 12); /* two streams, five events, two handles, a descriptor, and each shape's five */
    restore_graph_api(graph_api);
}

/* Device allocations failing as a model is made (its context's scalars, then its weights), one after
 * another: the build fails as out of GPU memory, holding nothing after it; until none is left to fail. */
static void build_allocations_failing(const weight_set *ws)
{
    const wv_backend *be = wv_cuda_backends()->by_dtype[WV_BF16];
    size_t held = held_now();
    int n = 1;
    for (;; n++) {
        wv_model m;
        wv_error err = {WV_OK, ""};
        be->fail_nth_alloc(n);
        wv_status s = build_bf16(&m, ws, &err);
        be->fail_nth_alloc(0);
        if (s == WV_OK) {
            wv_model_free(&m);
            break;
        }
        CHECK(s == WV_ERR_NOMEM_DEVICE && (strstr(err.msg, "cudaMalloc") || strstr(err.msg, "out of GPU memory")));
        CHECK(held_now() == held);
    }
    CHECK(n >= 3);
}

/* Progress callbacks, and those that found the thread's context other than the caller's: the caller's
 * code runs in its own context (a PyTorch progress bar, a preview), not in the decoder's. */
static int g_callbacks, g_callbacks_elsewhere;
static int g_callers_context;      /* stub_current_context() of the caller (-1: none) */
static int g_callers_foreign = -1; /* stub_foreign_context_current() of the caller */

static int progress_in_the_callers_context(void *user, int64_t done, int64_t total)
{
    (void)user, (void)done, (void)total;
    g_callbacks++;
    g_callbacks_elsewhere += stub_current_context() != g_callers_context ||
                             stub_foreign_context_current() != g_callers_foreign;
    return 0;
}

static void watch_progress(int callers_context, int callers_foreign)
{
    g_progress = progress_in_the_callers_context;
    g_callbacks = g_callbacks_elsewhere = 0;
    g_callers_context = callers_context;
    g_callers_foreign = callers_foreign;
}

static void check_progress_watched(void)
{
    CHECK(g_callbacks > 0 && g_callbacks_elsewhere == 0);
    g_progress = NULL;
}

/* A model on the second of two GPUs, built, decoding and freed in a thread that had no CUDA
 * context current: the thread ends as it began, and no context is made on the first GPU (restoring
 * "device 0" with cudaSetDevice would make one: hundreds of MiB on a GPU the caller never used). */
static void *on_the_second_gpu(void *weights)
{
    const weight_set *ws = (const weight_set *)weights;
    wv_model m;
    wv_error err = {WV_OK, ""};
    CHECK(stub_current_context() == -1);
    wv_status s = wv_model_build(&m, wv_cuda_backends()->by_dtype[WV_BF16], 1, ws->views, ws->n, &err);
    if (s) fprintf(stderr, "a model on device 1: %s\n", err.msg);
    CHECK(s == WV_OK);
    if (!s) {
        CHECK(stub_current_context() == -1);
        watch_progress(-1, -1);
        CHECK(decode(&m, &RUNS[1], &err) == WV_OK);
        check_progress_watched();
        CHECK(stub_current_context() == -1);
        wv_model_free(&m);
    }
    CHECK(stub_current_context() == -1);
    CHECK(stub_context_made(1) && !stub_context_made(0));
    CHECK(wv_cuda_current_device() == 0); /* none current: CUDA's default, not the last model's device */
    return NULL;
}

/* Latents in device memory handed to a model on the second GPU: read where they are on it, refused
 * where they are on the first, naming both (a GPU check machine has one GPU: only here does this run). */
static void latents_on_the_other_gpu_refused(const weight_set *ws)
{
    wv_model m;
    wv_error err = {WV_OK, ""};
    wv_options o = {0, 0, 0, WV_OUT_UNIT, 0, 0};
    wv_plan p;
    wv_stats st;
    float mean[4] = {0}, stdv[4] = {1, 1, 1, 1}, *out;
    CHECK(wv_model_build(&m, wv_cuda_backends()->by_dtype[WV_BF16], 1, ws->views, ws->n, &err) == WV_OK);
    CHECK(wv_plan_make(&p, &m, 2, 5, 6, &o, &err) == WV_OK);
    out = (float *)malloc(sizeof(float) * (size_t)p.frames_out * (size_t)p.H * (size_t)p.W * 3);
    for (int device = 1; device >= 0; device--) {
        float *lat = NULL;
        CHECK(cudaSetDevice(device) == cudaSuccess);
        CHECK(cudaMalloc((void **)&lat, sizeof(float) * 4 * 2 * 5 * 6) == cudaSuccess);
        wv_view v = {lat, 4, {4, 2, 5, 6}, {4LL * 2 * 5 * 6, 4LL * 5 * 6, 4LL * 6, 4}, WV_F32, 1};
        wv_status s = wv_decode(&m, &p, &v, 0, mean, stdv, &o, out, NULL, NULL, &st, &err);
        if (device == 1) {
            CHECK(s == WV_OK);
        } else {
            CHECK(s == WV_ERR_INVALID);
            CHECK(strstr(err.msg, "latents are on CUDA device 0 but the model is on device 1") != NULL);
        }
        CHECK(cudaFree(lat) == cudaSuccess);
    }
    wv_plan_free(&p);
    wv_model_free(&m);
    free(out);
}

static void model_on_the_second_gpu(const weight_set *ws)
{
    pthread_t thread;
    stub_set_device_count(2);
    CHECK(pthread_create(&thread, NULL, on_the_second_gpu, (void *)ws) == 0);
    pthread_join(thread, NULL);
    latents_on_the_other_gpu_refused(ws);
    stub_set_device_count(1);
}

/* A thread whose current context is not the device's primary one (made with the driver API): the
 * model is built, decodes and is freed in the primary context all the same (its memory, streams and
 * handles would otherwise be made in the caller's context, which the decode, in the primary one,
 * cannot use), and the thread ends with the caller's context current again. */
static void *in_a_foreign_context(void *weights)
{
    const weight_set *ws = (const weight_set *)weights;
    wv_model m;
    wv_error err = {WV_OK, ""};
    int uses = stub_foreign_context_uses();
    stub_make_foreign_context_current(0);
    wv_status s = wv_model_build(&m, wv_cuda_backends()->by_dtype[WV_F32], 0, ws->views, ws->n, &err);
    CHECK(s == WV_OK);
    CHECK(stub_foreign_context_current() == 0);
    if (!s) {
        watch_progress(stub_current_context(), 0);
        CHECK(decode(&m, &RUNS[1], &err) == WV_OK);
        check_progress_watched();
        CHECK(stub_foreign_context_current() == 0);
        wv_model_free(&m);
    }
    CHECK(stub_foreign_context_current() == 0);
    CHECK(stub_foreign_context_uses() == uses);
    return NULL;
}

static void model_beside_a_foreign_context(const weight_set *ws)
{
    pthread_t thread;
    CHECK(pthread_create(&thread, NULL, in_a_foreign_context, (void *)ws) == 0);
    pthread_join(thread, NULL);
}

/* A missing or old driver: the reason names the versions and the way out. */
static void old_driver_explained(const weight_set *ws)
{
    char why[256] = "", built_with[64];
    wv_model m;
    wv_error err = {WV_OK, ""};
    stub_set_driver_version(12040);
    CHECK(wv_cuda_device_count(why, sizeof why) == 0);
    CHECK(strstr(why, "supports CUDA up to 12.4, older than the CUDA 13.0") != NULL);
    CHECK(strstr(why, "rebuild with a CUDA 12 toolkit") != NULL);
    CHECK(build_bf16(&m, ws, &err) == WV_ERR_INVALID);
    CHECK(strstr(err.msg, "no CUDA device is usable: the NVIDIA driver supports CUDA up to 12.4") == err.msg);
    stub_set_driver_version(0);
    CHECK(wv_cuda_device_count(why, sizeof why) == 0);
    snprintf(built_with, sizeof built_with, "needs one for CUDA %d.%d or newer", CUDART_VERSION / 1000,
             CUDART_VERSION % 1000 / 10);
    CHECK(strstr(why, "no NVIDIA driver found") != NULL && strstr(why, built_with) != NULL);
    stub_set_driver_version(13000);
    CHECK(wv_cuda_device_count(why, sizeof why) == 1);
}

/* A GPU the build has no code for: refused when the model is built, naming the GPU, the archs built
 * and the rebuild, in every precision (bf16's own check comes after), not at a kernel mid-decode. */
static void gpu_without_code_explained(const weight_set *ws)
{
    wv_model m;
    wv_error err = {WV_OK, ""};
    for (int dt = 0; dt < WV_DTYPE_COUNT; dt++) {
        if (!wv_cuda_backends()->by_dtype[dt]) continue;
        stub_set_gpu(6, 1, 0);
        CHECK(wv_model_build(&m, wv_cuda_backends()->by_dtype[dt], -1, ws->views, ws->n, &err) == WV_ERR_INVALID);
        CHECK(strstr(err.msg, "has no code for CUDA stub (compute capability 6.1; it was built for ") == err.msg +
              strlen("this build of the CUDA backend "));
        CHECK(strstr(err.msg, "rebuild it with WANVIDEO_CUDA_ARCHS=61") != NULL);
        stub_set_gpu(9, 0, 1);
        CHECK(cudaGetLastError() == cudaSuccess); /* nothing left for a later launch's check */
    }
    CHECK(build_bf16(&m, ws, &err) == WV_OK);
    wv_model_free(&m);
}

/* A GPU that refuses this process a context (another holds it in exclusive-process mode): a model
 * for it is refused when it is built, naming the device, and nothing is made in the context that was
 * current instead (the first GPU's, whose work it would have become); info cannot tell whether the
 * build runs there. */
static void *on_a_refusing_gpu(void *weights)
{
    const weight_set *ws = (const weight_set *)weights;
    wv_model m;
    wv_error err = {WV_OK, ""};
    wv_cuda_device_info d;
    char why[256] = "";
    size_t held = held_now();
    CHECK(cudaSetDevice(0) == cudaSuccess);
    stub_refuse_context(1);
    CHECK(wv_model_build(&m, wv_cuda_backends()->by_dtype[WV_BF16], 1, ws->views, ws->n, &err) == WV_ERR_BACKEND);
    CHECK(starts_with(err.msg, "cannot use CUDA device 1: "));
    CHECK(held_now() == held && stub_current_context() == 0 && !stub_context_made(1));
    CHECK(cudaGetLastError() == cudaSuccess); /* nothing left for a later launch's check */
    CHECK(wv_cuda_device_info_get(1, &d, why, sizeof why) == 0 && !d.has_code);
    CHECK(starts_with(d.code_missing, "cannot tell whether this build runs there: cannot use CUDA device 1: "));
    stub_refuse_context(-1);
    CHECK(wv_model_build(&m, wv_cuda_backends()->by_dtype[WV_BF16], 1, ws->views, ws->n, &err) == WV_OK);
    wv_model_free(&m);
    return NULL;
}

static void gpu_refusing_a_context(const weight_set *ws)
{
    pthread_t thread;
    stub_set_device_count(2);
    CHECK(pthread_create(&thread, NULL, on_a_refusing_gpu, (void *)ws) == 0);
    pthread_join(thread, NULL);
    stub_set_device_count(1);
}

/* The free memory of a device the machine does not have is an error, not the current device's. */
static void missing_device_has_no_memory_figures(void)
{
    char why[256] = "";
    size_t free_b = 0, total_b = 0;
    CHECK(wv_cuda_mem_info(0, &free_b, &total_b, why, sizeof why) == 0 && total_b > 0);
    CHECK(wv_cuda_mem_info(5, &free_b, &total_b, why, sizeof why) == -1);
    CHECK(strstr(why, "no such device (this machine has 1)") != NULL);
}

/* What `info` reports of a device: its properties, and whether the build runs there, in the words
 * a model's build would refuse it with; a device the machine does not have is an error. */
static void device_info_says_whether_the_build_runs_there(void)
{
    wv_cuda_device_info d;
    char why[512] = "", archs[256];
    wv_cuda_built_archs(archs, sizeof archs);
    CHECK(strstr(archs, "9.0") != NULL);
    CHECK(wv_cuda_device_info_get(0, &d, why, sizeof why) == 0);
    CHECK(!strcmp(d.name, "CUDA stub") && d.major == 9 && d.minor == 0 && d.multiprocessors == 132);
    CHECK(d.total_memory == (size_t)80 << 30 && d.has_code && !d.code_missing[0]);
    stub_set_gpu(6, 1, 0);
    CHECK(wv_cuda_device_info_get(0, &d, why, sizeof why) == 0);
    CHECK(d.major == 6 && d.minor == 1 && !d.has_code);
    CHECK(strstr(d.code_missing, "has no code for CUDA stub (compute capability 6.1; it was built for ") != NULL);
    CHECK(strstr(d.code_missing, archs) != NULL);
    stub_set_gpu(9, 0, -1); /* no context: the properties stand, whether the code runs is not known */
    CHECK(wv_cuda_device_info_get(0, &d, why, sizeof why) == 0);
    CHECK(!strcmp(d.name, "CUDA stub") && d.major == 9 && !d.has_code);
    CHECK(strstr(d.code_missing, "cannot tell whether this build runs there: cannot use CUDA device 0: ") ==
          d.code_missing);
    stub_set_gpu(9, 0, 1);
    CHECK(cudaGetLastError() == cudaSuccess);
    CHECK(wv_cuda_device_info_get(1, &d, why, sizeof why) == -1);
    CHECK(strstr(why, "no such device (this machine has 1)") != NULL);
    CHECK(wv_cuda_device_info_get(-1, &d, why, sizeof why) == -1);
    stub_set_driver_version(0);
    CHECK(wv_cuda_device_info_get(0, &d, why, sizeof why) == -1);
    CHECK(strstr(why, "no NVIDIA driver found") != NULL);
    stub_set_driver_version(13000);
}

int main(void)
{
    static weight_set ws;
    static const wv_dtype types[] = {WV_F32, WV_F16, WV_BF16};
    static const char *const names[] = {"fp32", "fp16", "bf16"};
    wv_model reference;
    wv_error err = {WV_OK, ""};
    CHECK(wv_cuda_backends()->abi == WV_BACKEND_ABI);
    CHECK(wv_model_expected_keys(8, 4, add_key, &ws) > 0);
    old_driver_explained(&ws);
    gpu_without_code_explained(&ws);
    gpu_refusing_a_context(&ws);
    missing_device_has_no_memory_figures();
    device_info_says_whether_the_build_runs_there();
    if (getenv("WANVIDEO_STUB_COMPUTE") && atoi(getenv("WANVIDEO_STUB_COMPUTE")) == 2) {
        CHECK(wv_model_build(&reference, wv_backend_cpu(), -1, ws.views, ws.n, &err) == WV_OK);
        g_reference = &reference;
    }
    for (int i = 0; i < 3; i++) /* computing, fp16 is left to the op checks (the stub's loops are slow) */
        if (!g_reference || types[i] != WV_F16) with_model(&ws, types[i], names[i], types[i] == WV_BF16);
    if (!g_reference) model_on_the_second_gpu(&ws);
    if (!g_reference) model_beside_a_foreign_context(&ws);
    if (!g_reference) pinned_memory_kept_within_its_limit(&ws);
    trunk_output_unpinnable(&ws);
    stagings_unpinnable(&ws);
    declined_convolutions_not_retried(&ws);
    graph_api_declines_fall_back(&ws);
    graph_api_adds_a_bias_no_plan_takes(&ws);
    if (!g_reference) graph_api_failed_creates(&ws); /* a decode for each create: too slow computing */
    misaligned_buffers_mark_no_shape(&ws);
    graph_api_plans_fit_the_call_workspace(&ws);
    graph_api_plan_kept_from_a_larger_workspace_waits();
    graph_api_plan_made_in_a_smaller_workspace_is_made_again_in_a_larger();
    graph_api_misaligned_pointers_run_without_a_plan();
    shapes_of_many_frame_sizes_stay_bounded(&ws);
    shapes_within_the_bound_kept(&ws);
    graph_api_declined_plan_outlives_the_call_graphs(&ws);
    fused_call_short_of_workspace_keeps_step_graphs(&ws);
    steps_launched_before_their_callbacks(&ws);
    cudnn_refusals_and_broken_installations(&ws);
    step_waits_do_not_spin(&ws);
    runtime_faults_fail_cleanly(&ws);
    failed_captures_turn_graphs_off(&ws);
    if (!g_reference) step_graphs_reused_within_their_bound(&ws);
    profiled_decodes_capture_no_graph(&ws);
    declines_while_captured_mark_nothing(&ws);
    if (!g_reference) failed_creates(&ws); /* a decode for each create: too slow computing */
    build_allocations_failing(&ws);
    setenv("WANVIDEO_CUDA_GRAPHS", "1", 1); /* read when a model's context is made */
    with_model(&ws, WV_BF16, "bf16 with step graphs", 0);
    unsetenv("WANVIDEO_CUDA_GRAPHS");
    setenv("WANVIDEO_CUDA_DIRECT_CONV", "1", 1);
    if (!g_reference) with_model(&ws, WV_BF16, "bf16 on the direct kernel", 1);
    unsetenv("WANVIDEO_CUDA_DIRECT_CONV");
    if (g_reference) wv_model_free(&reference);
    free_weights(&ws);
    CHECK(stub_report() == 0);
    printf("%d passed, %d failed\n", g_checks - g_failures, g_failures);
    return g_failures ? 1 : 0;
}
