/* The host's cost of a full-size decode on the CUDA backend, measured without a GPU: the decoder of
 * Wan 2.1 (random weights), 720p x 81 in bf16 (latents [16, 21, 90, 160]), decoded through the CUDA
 * tables with tests/c/cuda_stub/ in place of the CUDA runtime, cuDNN and cuBLAS, so that kernels,
 * convolutions and GEMMs cost nothing. For each plan it prints its tiles, its convolutions' work and
 * its arena (a cache layout that takes more memory shows there, as a plan of more tiles), then the
 * calls the host makes (kernel launches, cuDNN convolutions, GEMMs, copies, graph launches), per
 * step, and the seconds the decode took less the seconds the stub spent in the device's place
 * (moving bytes, device memory): what the backend's host side costs (planning, queueing,
 * bookkeeping, copying the output out of pinned memory into a fresh array, whose pages fault in as
 * they are first written). A GPU adds each call's own cost (tools/conv_lab.cu measures it); the host
 * keeps up while this stays under the GPU's time.
 *
 * Build and run: bash tools/host_cost.sh [a word of a plan's name: that plan alone [buffers: and its
 * arena's buffers of a MiB or more, each cache named by its conv]] (WANVIDEO_CUDA_GRAPHS=1 in the
 * environment queues steps as graphs). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "cuda_stub/cuda_stub.h"
#include "test_util.h" /* the made-up weights */
#include "wv_cuda.h"

static double now_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

typedef struct {
    const char *name;
    int tile;            /* px; 0: whole frame unless the budget tiles it */
    size_t budget_mib;   /* the arena's (0: none) */
} plan_case;

static const plan_case CASES[] = {
    {"untiled", 0, 0},
    {"within 2 GiB with the weights (1904 MiB arena)", 0, 1904},
    {"exact tiles of 272 px", 272, 0},
};

/* A fresh output array as NumPy makes one (the extension's PyArray_SimpleNew): anonymous memory
 * that asks for transparent huge pages, as NumPy does for arrays of 4 MiB and more on Linux. */
static float *new_output(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    madvise(p, bytes, MADV_HUGEPAGE);
    return (float *)p;
}

/* The plan's arena buffers of a MiB or more, where each lies. */
static void print_buffers(const wv_plan *p, const wv_model *m)
{
    char name[192];
    for (int i = 0; i < p->n_buffers; i++)
        if (p->buffers[i].bytes >= (1 << 20))
            printf("  %8.1f MiB at %7.1f  %s\n", (double)p->buffers[i].bytes / (1 << 20),
                   (double)p->buffers[i].offset / (1 << 20), wv_plan_buffer_name(p, m, i, name, sizeof name));
}

/* One decode of plan p into a fresh output array, as a caller's; the second of two is reported. */
static void measure(const wv_model *m, const plan_case *c, const float *lat, int show_buffers)
{
    enum { T = 21, H = 90, W = 160, Z = 16 };
    float mean[Z] = {0}, sd[Z];
    wv_options o = {c->tile, c->tile, 0, WV_OUT_UNIT, c->budget_mib << 20, 0};
    wv_view v = {(void *)lat, 4, {Z, T, H, W}, {4LL * T * H * W, 4LL * H * W, 4LL * W, 4}, WV_F32, 0};
    wv_plan p;
    wv_stats st;
    wv_error err;
    for (int i = 0; i < Z; i++) sd[i] = 1.0f;
    if (wv_plan_make(&p, m, T, H, W, &o, &err)) {
        printf("%s: %s\n", c->name, err.msg);
        return;
    }
    for (int run = 0; run < 2; run++) {
        size_t out_bytes = sizeof(float) * (size_t)p.frames_out * (size_t)p.H * (size_t)p.W * 3;
        float *out = new_output(out_bytes);
        stub_calls a = stub_counts(), b;
        double start = now_seconds(), seconds;
        wv_status s = out ? wv_decode(m, &p, &v, 0, mean, sd, &o, out, NULL, NULL, &st, &err) : WV_ERR_NOMEM;
        seconds = now_seconds() - start;
        b = stub_counts();
        if (out) munmap(out, out_bytes);
        if (s) {
            printf("%s: %s\n", c->name, out ? err.msg : "no memory for the output");
            break;
        }
        if (run == 0) continue; /* the first builds the per-shape caches and touches the arena */
        printf("%s: %d x %d tiles, %lld steps, %.1f TFLOP of convolutions, arena %.0f MiB\n", c->name, p.tiles_x,
               p.tiles_y, (long long)st.steps, p.conv_flops / 1e12, (double)p.arena_bytes / (1 << 20));
        if (show_buffers) print_buffers(&p, m);
        printf("  calls     kernels %ld, convolutions %ld, GEMMs %ld, copies %ld, graph launches %ld (%.0f a step)\n",
               b.kernels - a.kernels, b.convolutions - a.convolutions, b.gemms - a.gemms, b.copies - a.copies,
               b.graph_launches - a.graph_launches,
               (double)(b.kernels - a.kernels + b.convolutions - a.convolutions + b.gemms - a.gemms + b.copies -
                        a.copies + b.graph_launches - a.graph_launches) / (double)st.steps);
        printf("  host      %.2f s (the decode took %.2f s, of which the stub in the device's place %.2f s)\n",
               seconds - (b.device_seconds - a.device_seconds), seconds, b.device_seconds - a.device_seconds);
    }
    wv_plan_free(&p);
}

int main(int argc, char **argv)
{
    static weight_set ws;
    wv_model m;
    wv_error err;
    float *lat;
    int show_buffers;
    wv_model_expected_keys(96, 16, add_key, &ws);
    if (wv_model_build(&m, wv_cuda_backends()->by_dtype[WV_BF16], -1, ws.views, ws.n, &err)) {
        printf("model: %s\n", err.msg);
        return 1;
    }
    lat = rand_floats((size_t)16 * 21 * 90 * 160);
    printf("host cost of 720p x 81 in bf16 on the CUDA backend's host side (stub runtime)%s\n",
           getenv("WANVIDEO_CUDA_GRAPHS") ? ", WANVIDEO_CUDA_GRAPHS set" : "");
    show_buffers = argc > 2 && !strcmp(argv[2], "buffers");
    for (size_t i = 0; i < sizeof CASES / sizeof *CASES; i++)
        if (argc < 2 || strstr(CASES[i].name, argv[1])) measure(&m, &CASES[i], lat, show_buffers);
    free(lat);
    wv_model_free(&m);
    free_weights(&ws);
    return stub_report();
}
