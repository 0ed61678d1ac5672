/* The C core on its own, built with AddressSanitizer and UndefinedBehaviorSanitizer in CI:
 * every CPU op against a naive loop, the planner, model building errors, allocation failure,
 * and tiled == untiled on a small decoder. Exit status 0 when every check passes. */
#define _POSIX_C_SOURCE 200809L /* fork, waitpid */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _WIN32
#include <windows.h>
#else
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#endif

#include "test_util.h"
#include "wv_internal.h"
#include "wv_threads.h"

static int imin(int a, int b) { return a < b ? a : b; }

static float max_abs_diff(const float *a, const float *b, size_t n)
{
    float m = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        m = fmaxf(m, d == d ? d : INFINITY); /* a NaN fails (fmaxf would drop it) */
    }
    return m;
}

/* ---- ops against naive loops --------------------------------------------------------------- */

/* The context the op tests hand the ops: NULL, or one inside a decode call, whose team of threads
 * splits their rows (begun_cpu_ctx). */
static void *g_op_ctx;

/* A CPU context inside a decode call (begun, on host latents): its ops split rows over its threads. */
static void *begun_cpu_ctx(void)
{
    const wv_backend *be = wv_backend_cpu();
    wv_view lat = {0};
    wv_call call = {&lat, 0, NULL, 0, 0, NULL, NULL, 0};
    wv_error err = {WV_OK, ""};
    void *ctx = NULL;
    CHECK(be->ctx_create(be, -1, &ctx, &err) == WV_OK);
    CHECK(be->begin(ctx, &call, &err) == WV_OK);
    return ctx;
}

static void end_cpu_ctx(void *ctx)
{
    wv_backend_cpu()->finish(ctx);
    wv_backend_cpu()->ctx_destroy(ctx);
}

/* value of interior pixel (y, x), channel c, frame f of a padded frame sequence; 0 outside */
static float at(const float *frames, wv_grid g, int C, int f, int y, int x, int c)
{
    if (y < 0 || y >= g.h || x < 0 || x >= g.w) return 0.0f;
    return frames[((int64_t)f * wv_grid_positions(g) + (int64_t)(y + g.pad) * (g.w + 2 * g.pad) + x + g.pad) * C + c];
}

/* How test_conv runs a conv's temporal taps: all at once; tap 0, then the rest added (as the driver
 * does when the taps are apart); or only taps 1.. into y (no bias). */
enum { TAPS_AT_ONCE, TAPS_SPLIT, TAPS_AFTER_FIRST };

static void test_conv(int kt, int k, int how, int accumulate, wv_grid g)
{
    const wv_backend *be = wv_backend_cpu();
    int cin = 3, cout = 4, taps = kt * k * k, first = how == TAPS_AFTER_FIRST ? 1 : 0;
    int64_t P = wv_grid_positions(g);
    float *w_oidhw = rand_floats((size_t)cout * cin * taps), *bias = rand_floats(cout);
    wv_conv cv = {NULL, bias, cin, cout, kt, k, k, 0, kt > 1 ? 0 : -1, 0, 0};
    float *packed = (float *)calloc((size_t)be->packed_weight_elems(&cv), sizeof(float));
    float *seq = (float *)calloc((size_t)kt * P * cin, sizeof(float)); /* frames t-kt+1 .. t, ring zero */
    float *y = rand_floats((size_t)P * cout), *y0 = (float *)malloc(sizeof(float) * (size_t)P * cout);
    const void *frames[WV_MAX_TAPS];
    cv.weight = packed;
    memcpy(y0, y, sizeof(float) * (size_t)P * cout);
    for (int f = 0; f < kt; f++)
        for (int yy = 0; yy < g.h; yy++)
            for (int xx = 0; xx < g.w; xx++)
                for (int c = 0; c < cin; c++)
                    seq[((int64_t)f * P + (yy + 1) * (g.w + 2) + xx + 1) * cin + c] = frand();
    for (int dt = 0; dt < kt; dt++) frames[dt] = seq + (int64_t)(kt - 1 - dt) * P * cin; /* any order in memory */
    be->pack_conv_weight(w_oidhw, &cv, packed);
    if (how == TAPS_SPLIT && kt > 1) {
        be->conv(g_op_ctx, &cv, g, frames, 0, 0, y, accumulate);
        be->conv(g_op_ctx, &cv, g, frames, 1, kt - 1, y, 1);
    } else {
        be->conv(g_op_ctx, &cv, g, frames, first, kt - 1, y, accumulate);
    }
    for (int yy = 0; yy < g.h; yy++)
        for (int xx = 0; xx < g.w; xx++)
            for (int o = 0; o < cout; o++) {
                double want = first ? 0.0 : bias[o];
                float got = at(y, g, cout, 0, yy, xx, o);
                for (int dt = first; dt < kt; dt++)
                    for (int dy = 0; dy < k; dy++)
                        for (int dx = 0; dx < k; dx++)
                            for (int i = 0; i < cin; i++)
                                want += w_oidhw[(((int64_t)o * cin + i) * kt + dt) * k * k + dy * k + dx] *
                                        at(seq, g, cin, kt - 1 - dt, yy + dy - k / 2, xx + dx - k / 2, i);
                if (accumulate) want += at(y0, g, cout, 0, yy, xx, o);
                CHECK(fabs(want - got) < 1e-4);
            }
    free(w_oidhw), free(bias), free(packed), free(seq), free(y), free(y0);
}

/* ---- the environment --------------------------------------------------------------------------- */

static void set_env(const char *name, const char *value) /* NULL: unset */
{
#ifdef _WIN32
    SetEnvironmentVariableA(name, value);
#else
    if (value)
        setenv(name, value, 1);
    else
        unsetenv(name);
#endif
}

/* What the host sets is read back (on Windows from the process's environment, not the C runtime's
 * copy), cut to the buffer, and an unset name is not found. */
/* The guard a Python module sets (it holds the GIL): each read enters it and leaves with its token. */
static int g_guard_depth, g_guard_reads, g_guard_tokens_ok;

static int guard_enter(void)
{
    g_guard_depth++;
    return 41 + g_guard_reads;
}

static void guard_leave(int token)
{
    g_guard_tokens_ok += token == 41 + g_guard_reads;
    g_guard_reads++;
    g_guard_depth--;
}

static void test_env_guard(void)
{
    static const wv_env_guard guard = {guard_enter, guard_leave};
    char buf[8];
    set_env("WV_TEST_ENV", "5");
    wv_set_env_guard(&guard);
    CHECK(wv_getenv("WV_TEST_ENV", buf, sizeof buf) == 1 && !strcmp(buf, "5"));
    CHECK(wv_getenv("WV_TEST_ENV_UNSET", buf, sizeof buf) == 0);
    CHECK(g_guard_reads == 2 && g_guard_tokens_ok == 2 && g_guard_depth == 0);
    wv_set_env_guard(NULL);
    CHECK(wv_getenv("WV_TEST_ENV", buf, sizeof buf) == 1 && g_guard_reads == 2);
    set_env("WV_TEST_ENV", NULL);
}

/* Sizes in messages: the unit the size fills (1024 of one make the next), and the exact count beside
 * it from 1 KiB on. */
static void test_size_text(void)
{
    static const struct {
        size_t bytes;
        const char *size, *exact;
    } cases[] = {
        {0, "0 bytes", "0 bytes"},
        {1, "1 byte", "1 byte"},
        {1023, "1023 bytes", "1023 bytes"},
        {1024, "1.0 KiB", "1024 bytes (1.0 KiB)"},
        {749312, "731.8 KiB", "749312 bytes (731.8 KiB)"},
        {1048575, "1024.0 KiB", "1048575 bytes (1024.0 KiB)"},
        {1048576, "1.0 MiB", "1048576 bytes (1.0 MiB)"},
        {(size_t)1 << 30, "1.00 GiB", "1073741824 bytes (1.00 GiB)"},
        {(size_t)1917423616, "1.79 GiB", "1917423616 bytes (1.79 GiB)"},
    };
    char buf[WV_BYTES_TEXT];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        CHECK(!strcmp(wv_size_text(buf, sizeof buf, cases[i].bytes), cases[i].size));
        CHECK(!strcmp(wv_bytes_text(buf, sizeof buf, cases[i].bytes), cases[i].exact));
    }
    if (sizeof(size_t) == 8) { /* the largest: a tebibyte is the last unit, and the text fits its buffer */
        CHECK(!strcmp(wv_size_text(buf, sizeof buf, (size_t)3 << 40), "3.00 TiB"));
        CHECK(!strcmp(wv_size_text(buf, sizeof buf, (size_t)1 << 50), "1024.00 TiB"));
        CHECK(!strcmp(wv_bytes_text(buf, sizeof buf, SIZE_MAX), "18446744073709551615 bytes (16777216.00 TiB)"));
    }
}

/* What failed, before a failure's message; a success's message left as it was; a long one cut. */
static void test_fail_in(void)
{
    wv_error err = {WV_OK, "kept"};
    char long_msg[sizeof err.msg];
    CHECK(wv_fail_in(&err, WV_OK, "the weights") == WV_OK && !strcmp(err.msg, "kept"));
    CHECK(wv_fail_in(&err, wv_fail(&err, WV_ERR_NOMEM, "out of memory"), "the weights") == WV_ERR_NOMEM);
    CHECK(err.code == WV_ERR_NOMEM && !strcmp(err.msg, "the weights: out of memory"));
    memset(long_msg, 'x', sizeof long_msg - 1);
    long_msg[sizeof long_msg - 1] = '\0';
    wv_fail(&err, WV_ERR_BACKEND, "%s", long_msg);
    CHECK(wv_fail_in(&err, WV_ERR_BACKEND, "the weights") == WV_ERR_BACKEND);
    CHECK(starts_with(err.msg, "the weights: xxx") && strlen(err.msg) == sizeof err.msg - 1);
    CHECK(wv_fail_in(NULL, WV_ERR_NOMEM, "the weights") == WV_ERR_NOMEM);
    wv_fail(&err, WV_ERR_BACKEND, WV_INTERNAL "a check"); /* a bug's message keeps its opening */
    CHECK(wv_fail_in(&err, WV_ERR_BACKEND, "the weights") == WV_ERR_BACKEND && !strcmp(err.msg, WV_INTERNAL "a check"));
}

static void test_getenv(void)
{
    char buf[8], long_value[100];
    memset(long_value, 'x', sizeof long_value - 1);
    long_value[sizeof long_value - 1] = '\0';
    set_env("WV_TEST_ENV", "3");
    CHECK(wv_getenv("WV_TEST_ENV", buf, sizeof buf) == 1 && !strcmp(buf, "3"));
    set_env("WV_TEST_ENV", long_value);
    CHECK(wv_getenv("WV_TEST_ENV", buf, sizeof buf) == 1 && !strcmp(buf, "xxxxxxx"));
    set_env("WV_TEST_ENV", NULL);
    CHECK(wv_getenv("WV_TEST_ENV", buf, sizeof buf) == 0);
    test_env_guard();
}

/* ---- the team of threads ------------------------------------------------------------------- */

#define TEAM_MAX_ITEMS 97

typedef struct {
    int runs[TEAM_MAX_ITEMS]; /* how often each item ran: each item is one thread's alone */
} team_job;

static void count_item(void *job, int64_t item) { ((team_job *)job)->runs[item]++; }

/* A job whose first item to start waits (up to 10 s of CPU time) for a second one to start: only
 * a team whose workers take items passes it. */
typedef struct {
    atomic_int started;
    int waited_in_vain;
} meeting_job;

static void meet(void *job_, int64_t item)
{
    meeting_job *job = (meeting_job *)job_;
    clock_t t0 = clock();
    (void)item;
    if (atomic_fetch_add(&job->started, 1) > 0) return;
    while (atomic_load(&job->started) < 2)
        if (clock() - t0 > 10 * CLOCKS_PER_SEC) {
            job->waited_in_vain = 1;
            return;
        }
}

#ifndef _WIN32
/* A child forked from a team's process has none of its workers: the team runs jobs in the caller
 * there and stops without joining (or waiting for a lock some worker may hold); the parent's is intact. */
static void test_team_after_fork(void)
{
    wv_team *t = wv_team_start(3);
    team_job job;
    pid_t pid;
    int status = 0, done = 0;
    memset(&job, 0, sizeof job);
    wv_team_run(t, 5, count_item, &job); /* the workers have run, and wait for the next job */
    pid = fork();
    if (pid == 0) {
        int ok;
        memset(&job, 0, sizeof job);
        wv_team_run(t, TEAM_MAX_ITEMS, count_item, &job);
        ok = wv_team_size(t) == 1 && job.runs[0] == 1 && job.runs[TEAM_MAX_ITEMS - 1] == 1;
        wv_team_stop(t);
        _exit(ok ? 0 : 3);
    }
    CHECK(pid > 0);
    for (int waited = 0; pid > 0 && !done && waited < 3000; waited++) { /* 30 s at most: a hang fails */
        struct timespec ten_ms = {0, 10000000};
        done = waitpid(pid, &status, WNOHANG) == pid;
        if (!done) nanosleep(&ten_ms, NULL);
    }
    if (pid > 0 && !done) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    CHECK(done && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    memset(&job, 0, sizeof job);
    wv_team_run(t, 7, count_item, &job);
    CHECK(wv_team_size(t) == 3 && job.runs[6] == 1);
    wv_team_stop(t);
}
#endif

/* Teams of 1 (none) to 5 threads run every item of job after job exactly once, whatever the count,
 * 0 and 1 included, their workers taking items; a team stopped without a job joins its workers too
 * (LeakSanitizer sees any). */
static void test_team(void)
{
    static const int64_t counts[] = {0, 1, 2, 3, 7, 64, TEAM_MAX_ITEMS};
    CHECK(wv_team_start(1) == NULL && wv_team_size(NULL) == 1);
    wv_team_stop(wv_team_start(3));
    for (int threads = 1; threads <= 5; threads++) {
        wv_team *t = wv_team_start(threads);
        CHECK(wv_team_size(t) == threads);
        for (int rep = 0; rep < 50; rep++)
            for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
                team_job job;
                int wrong = 0;
                memset(&job, 0, sizeof job);
                wv_team_run(t, counts[c], count_item, &job);
                for (int64_t i = 0; i < TEAM_MAX_ITEMS; i++) wrong += job.runs[i] != (i < counts[c]);
                CHECK(wrong == 0);
            }
        if (threads > 1) {
            meeting_job meeting = {0, 0};
            wv_team_run(t, 2 * threads, meet, &meeting);
            CHECK(!meeting.waited_in_vain);
        }
        wv_team_stop(t);
    }
#ifndef _WIN32
    test_team_after_fork();
#endif
}

/* The ring's slots: tap dt of each frame where wv_ring says, the new frame in tap 0's slot when the
 * cache keeps kt - 1 frames, in the free one of a ring of kt. */
static void test_ring_slots(void)
{
    char base[64];
    wv_ring apart = {base, 8, 2, 0}, ring = {base, 8, 3, 0};
    CHECK(wv_ring_slot(&apart, 2) == wv_ring_slot(&apart, 0) && wv_ring_slot(&apart, 1) == base + 8);
    apart.oldest = 1;
    CHECK(wv_ring_slot(&apart, 0) == base + 8 && wv_ring_slot(&apart, 1) == base &&
          wv_ring_slot(&apart, 2) == base + 8);
    CHECK(wv_ring_slot(&ring, 2) == base + 16);
    ring.oldest = 2;
    CHECK(wv_ring_slot(&ring, 0) == base + 16 && wv_ring_slot(&ring, 1) == base && wv_ring_slot(&ring, 2) == base + 8);
}

/* Two frames: the rows of both, each frame's ring zeroed. */
static void test_rms_norm(void)
{
    const wv_backend *be = wv_backend_cpu();
    wv_grid gx = {3, 4, 0}, gy = {3, 4, 1};
    int C = 5, n = 2;
    int64_t fy = wv_grid_positions(gy) * C;
    float *x = rand_floats((size_t)n * 12 * C), *gamma = rand_floats((size_t)C);
    float *y = rand_floats((size_t)(n * fy));
    memset(x, 0, sizeof(float) * (size_t)C); /* a pixel of zeros: 0 out, not 0 / 0 */
    for (int c = 0; c < C; c++) x[C + c] *= 1e-11f; /* a norm near eps (1e-12): F.normalize's, exactly */
    be->rms_norm(g_op_ctx, x, gx, y, gy, C, n, gamma, 1);
    for (int p = 0; p < n * 12; p++) {
        double ss = 0;
        for (int c = 0; c < C; c++) ss += (double)x[p * C + c] * x[p * C + c];
        for (int c = 0; c < C; c++) {
            double v = x[p * C + c] / fmax(sqrt(ss), 1e-12) * sqrt((double)C) * gamma[c];
            CHECK(fabs(v / (1 + exp(-v)) - at(y, gy, C, p / 12, p % 12 / 4, p % 4, c)) < 1e-5);
        }
    }
    for (int f = 0; f < n; f++)
        for (int px = 0; px < gy.w + 2; px++) CHECK(y[f * fy + px * C] == 0.0f); /* ring zeroed */
    free(x), free(gamma), free(y);
}

/* One pixel of nearest x2 then a 3x3 conv (pad 1) C -> co over an fh x fw frame [fh][fw][C]: output
 * pixel (Y, X), channel o. The definition the sub-pixel conv must equal. */
static double resample_ref(const float *frame, int fh, int fw, int C, const float *w3, const float *bias, int Y, int X,
                           int o)
{
    double v = bias[o];
    for (int ky = 0; ky < 3; ky++)
        for (int kx = 0; kx < 3; kx++) {
            int uy = Y + ky - 1, ux = X + kx - 1;
            if (uy < 0 || uy >= 2 * fh || ux < 0 || ux >= 2 * fw) continue;
            for (int c = 0; c < C; c++)
                v += w3[((int64_t)o * C + c) * 9 + ky * 3 + kx] * frame[((int64_t)(uy / 2) * fw + ux / 2) * C + c];
        }
    return v;
}

/* The driver's upsample on one region: the low-resolution region rs of the frame (a ring of garbage,
 * then zeroed) -> sub-pixel conv -> pixel_shuffle into the x2 region rd, against resample_ref. rd
 * needs no low pixel outside rs but those beyond the frame's edge. */
static void test_subpixel(wv_rect rs, wv_rect rd)
{
    const wv_backend *be = wv_backend_cpu();
    enum { FH = 6, FW = 7, C = 3, CO = 2 };
    wv_grid gs = {rs.y.hi - rs.y.lo, rs.x.hi - rs.x.lo, 1}, gd = {rd.y.hi - rd.y.lo, rd.x.hi - rd.x.lo, 1};
    float *frame = rand_floats(FH * FW * C), *w3 = rand_floats(CO * C * 9), *bias = rand_floats(CO);
    float *w2 = (float *)malloc(sizeof(float) * 4 * CO * C * 4), bias4[4 * CO];
    float *x = rand_floats((size_t)wv_grid_positions(gs) * C), *y = rand_floats((size_t)wv_grid_positions(gd) * CO);
    wv_conv cv = {NULL, bias4, C, 4 * CO, 1, 2, 2, 1, -1, 0, 0};
    wv_grid go = wv_conv_out_grid(&cv, gs);
    float *packed = (float *)calloc((size_t)be->packed_weight_elems(&cv), sizeof(float));
    float *phases = rand_floats((size_t)wv_grid_positions(go) * 4 * CO);
    const void *frames[1] = {x};
    CHECK(go.h == gs.h + 1 && go.w == gs.w + 1 && go.pad == 0);
    for (int p = 0; p < 4; p++) memcpy(bias4 + p * CO, bias, sizeof(float) * CO);
    wv_subpixel_weight(w3, CO, C, w2);
    be->pack_conv_weight(w2, &cv, packed);
    cv.weight = packed;
    for (int yy = 0; yy < gs.h; yy++)
        for (int xx = 0; xx < gs.w; xx++)
            memcpy(x + ((int64_t)(yy + 1) * (gs.w + 2) + xx + 1) * C,
                   frame + ((int64_t)(rs.y.lo + yy) * FW + rs.x.lo + xx) * C, sizeof(float) * C);
    be->zero_ring(g_op_ctx, x, gs, C, 1);
    be->conv(g_op_ctx, &cv, gs, frames, 0, 0, phases, 0);
    be->pixel_shuffle(g_op_ctx, phases, go, rs.y.lo, rs.x.lo, y, gd, rd.y.lo, rd.x.lo, CO);
    for (int py = 0; py < gd.h; py++)
        for (int px = 0; px < gd.w; px++)
            for (int o = 0; o < CO; o++)
                CHECK(fabs(resample_ref(frame, FH, FW, C, w3, bias, rd.y.lo + py, rd.x.lo + px, o) -
                           at(y, gd, CO, 0, py, px, o)) < 1e-5);
    free(frame), free(w3), free(bias), free(w2), free(x), free(y), free(packed), free(phases);
}

static void test_copy_channels(void)
{
    const wv_backend *be = wv_backend_cpu();
    float *src = rand_floats(5 * 8), *dst = rand_floats(5 * 3);
    be->copy_channels(g_op_ctx, src, 8, 4, dst, 3, 5);
    for (int p = 0; p < 5; p++)
        for (int c = 0; c < 3; c++) CHECK(dst[p * 3 + c] == src[p * 8 + 4 + c]);
    free(src), free(dst);
}

/* The CPU attention, `rows` query rows a chunk, against softmax(q k^T / sqrt(C)) v in double. */
static void check_attention(const float *qkv, int N, int C, int rows)
{
    const wv_backend *be = wv_backend_cpu();
    float *out = (float *)malloc(sizeof(float) * N * C), *scores = (float *)malloc(sizeof(float) * rows * N);
    double *s = (double *)malloc(sizeof(double) * N);
    be->attention(g_op_ctx, qkv, out, N, C, scores, rows);
    for (int q = 0; q < N; q++) {
        double mx = -1e300, sum = 0;
        for (int k = 0; k < N; k++) {
            s[k] = 0;
            for (int c = 0; c < C; c++) s[k] += (double)qkv[q * 3 * C + c] * qkv[k * 3 * C + C + c];
            s[k] /= sqrt((double)C);
            mx = fmax(mx, s[k]);
        }
        for (int k = 0; k < N; k++) sum += (s[k] = exp(s[k] - mx));
        for (int c = 0; c < C; c++) {
            double v = 0;
            for (int k = 0; k < N; k++) v += s[k] / sum * qkv[k * 3 * C + 2 * C + c];
            CHECK(fabs(v - out[q * C + c]) < 1e-5);
        }
    }
    free(out), free(scores), free(s);
}

static void test_attention(void)
{
    int N = 7, C = 4;
    float *qkv = rand_floats((size_t)N * 3 * C);
    check_attention(qkv, N, 3, 2); /* 4 chunks, the last of one row */
    check_attention(qkv, N, 3, 5); /* 2 chunks; split over 2 or 3 threads, a short last share */
    /* scores (10 - q)(4k - 9), up to 150 and exact in float: expf overflows unless the max goes first */
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++) {
            qkv[i * 3 * C + c] = (float)(10 - i);
            qkv[i * 3 * C + C + c] = (float)(2 * i - 6 + c);
        }
    check_attention(qkv, N, C, 2);
    /* one key 200 above every other score, first, inside or last: a max that leaves it out overflows */
    for (int at = 0; at < N; at += 3) {
        for (int i = 0; i < N; i++)
            for (int c = 0; c < C; c++) {
                qkv[i * 3 * C + c] = c == 0 ? 20.0f : 0.0f;
                qkv[i * 3 * C + C + c] = c == 0 && i == at ? 20.0f : 0.0f; /* 20 * 20 / sqrt(4) */
            }
        check_attention(qkv, N, C, 3);
    }
    free(qkv);
}

static void test_dtype_conversion(void)
{
    uint16_t half[4] = {0x3c00, 0xc000, 0x0001, 0x7c00}; /* 1, -2, smallest subnormal, inf */
    uint16_t bf[2] = {0x3f80, 0xc040};                   /* 1, -3 */
    float f[4];
    wv_view v = {half, 1, {4}, {2}, WV_F16, 0};
    wv_view_to_f32(&v, f);
    CHECK(f[0] == 1.0f && f[1] == -2.0f && f[2] == ldexpf(1.0f, -24) && isinf(f[3]));
    v.data = bf;
    v.shape[0] = 2;
    v.dtype = WV_BF16;
    wv_view_to_f32(&v, f);
    CHECK(f[0] == 1.0f && f[1] == -3.0f);
    {
        float m[6] = {0, 1, 2, 3, 4, 5}, t[6]; /* [2][3] read transposed as [3][2] */
        wv_view s = {m, 2, {3, 2}, {4, 12}, WV_F32, 0};
        wv_view_to_f32(&s, t);
        CHECK(t[0] == 0 && t[1] == 3 && t[2] == 1 && t[3] == 4 && t[4] == 2 && t[5] == 5);
    }
}

/* ---- model, plan, decode ------------------------------------------------------------------- */

static void test_model_errors(weight_set *ws)
{
    wv_model m;
    wv_error err = {WV_OK, ""};
    wv_named_view saved = ws->views[7];
    int64_t s0;
    ws->views[7].key = "decoder.not.a.key"; /* one key renamed: missing and unexpected */
    CHECK(wv_model_build(&m, wv_backend_cpu(), -1, ws->views, ws->n, &err) == WV_ERR_INVALID);
    CHECK(strstr(err.msg, "missing weight") != NULL);
    ws->views[7] = saved;
    s0 = ws->views[7].view.shape[0];
    ws->views[7].view.shape[0] = s0 + 1;
    CHECK(wv_model_build(&m, wv_backend_cpu(), -1, ws->views, ws->n, &err) == WV_ERR_INVALID);
    CHECK(strstr(err.msg, ws->views[7].key) != NULL && strstr(err.msg, "shape") != NULL);
    ws->views[7].view.shape[0] = s0;
    ws->views[7].view.on_device = 1; /* weights are read on the host, whatever the backend */
    CHECK(wv_model_build(&m, wv_backend_cpu(), -1, ws->views, ws->n, &err) == WV_ERR_INVALID);
    CHECK(strstr(err.msg, ws->views[7].key) != NULL && strstr(err.msg, "device memory") != NULL);
    ws->views[7].view.on_device = 0;
    ws->views[7].view.data = NULL;
    CHECK(wv_model_build(&m, wv_backend_cpu(), -1, ws->views, ws->n, &err) == WV_ERR_INVALID);
    CHECK(strstr(err.msg, ws->views[7].key) != NULL && strstr(err.msg, "null data pointer") != NULL);
    ws->views[7] = saved;
    CHECK(wv_model_build(&m, wv_backend_cpu(), -1, ws->views, ws->n - 1, &err) == WV_ERR_INVALID);
    ws->views[ws->n] = saved; /* one key twice: named so, not "unexpected" */
    CHECK(wv_model_build(&m, wv_backend_cpu(), -1, ws->views, ws->n + 1, &err) == WV_ERR_INVALID);
    CHECK(strstr(err.msg, saved.key) != NULL && strstr(err.msg, "given twice") != NULL);
    /* two keys twice, in either order: the one mentioned again first is named */
    for (int first = 3, second = 9; first <= 9; first += 6, second -= 6) {
        char want[128];
        CHECK(ws->n + 2 <= (int)(sizeof ws->views / sizeof ws->views[0]));
        ws->views[ws->n] = ws->views[first];
        ws->views[ws->n + 1] = ws->views[second];
        CHECK(wv_model_build(&m, wv_backend_cpu(), -1, ws->views, ws->n + 2, &err) == WV_ERR_INVALID);
        snprintf(want, sizeof want, "weight '%s' given twice", ws->views[first].key);
        CHECK(strcmp(err.msg, want) == 0);
    }
    wv_backend_cpu()->fail_nth_alloc(1);
    CHECK(wv_model_build(&m, wv_backend_cpu(), -1, ws->views, ws->n, &err) == WV_ERR_NOMEM);
    CHECK(starts_with(err.msg, "the model's weights: out of host memory allocating "));
    wv_backend_cpu()->fail_nth_alloc(0);
}

static wv_cache_layout taps_never_apart(const wv_conv *cv)
{
    (void)cv;
    return WV_CACHE_RING;
}

static wv_cache_layout taps_apart_if_square(const wv_conv *cv)
{
    return cv->cin == cv->cout ? WV_CACHE_TAPS : WV_CACHE_RING;
}

static wv_cache_layout kept_if_square(const wv_conv *cv)
{
    return cv->cin == cv->cout ? WV_CACHE_KEPT : WV_CACHE_RING;
}

/* The largest packed weights of a causal conv on a ring (WV_CACHE_RING) under this layout. */
static int64_t largest_on_ring(const wv_model *m, const wv_backend *be)
{
    int64_t largest = 0;
    for (int b = 0, c = -1; wv_next_conv(m, m->n_blocks, &b, &c);) {
        const wv_conv *cv = &m->blocks[b].conv[c];
        if (cv->kt > 1 && be->cache_layout(cv) == WV_CACHE_RING && be->packed_weight_elems(cv) > largest)
            largest = be->packed_weight_elems(cv);
    }
    return largest;
}

/* A backend that asks for a weight scratch gets room for the largest packed weights of its causal
 * convs on rings, whose taps it turns: every causal conv on a ring (dim 8: conv1, z_dim 4 -> 32, or a
 * 3x3x3 32 -> 32 residual conv: 27 648 elements), then only those of unequal widths (the others' taps
 * apart: a 3x3x3 16 -> 32 one, 13 824), then none. */
static void test_weight_scratch(const wv_model *m, const wv_options *o)
{
    wv_cache_layout (*const layouts[])(const wv_conv *) = {taps_never_apart, taps_apart_if_square,
                                                           m->backend->cache_layout};
    static const int64_t largest[] = {32 * 32 * 27, 16 * 32 * 27, 0};
    for (int i = 0; i < 3; i++) {
        wv_backend asks = *m->backend;
        wv_model with = *m;
        wv_plan p;
        wv_error err;
        asks.causal_weight_scratch = 1;
        asks.cache_layout = layouts[i];
        with.backend = &asks;
        CHECK(largest_on_ring(m, &asks) == largest[i]);
        CHECK(wv_plan_make(&p, &with, 3, 9, 11, o, &err) == WV_OK);
        CHECK(p.buffers[WV_BUF_WEIGHT_SCRATCH].bytes == wv_align_up((size_t)largest[i] * sizeof(float)));
        wv_plan_free(&p);
    }
}

/* Within a budget that 5 columns fit, a 256 x 144 px frame is cut into columns, not a grid of
 * squarer tiles (4 x 2 is what the largest square tile that fits leads to): each cut recomputes
 * halos along its length, so row cuts, along the long side, cost more. */
static void test_least_work_split(const wv_model *m)
{
    wv_options o = {0, 0, 0, WV_OUT_UNIT, 0, 0};
    wv_plan whole, cols, p;
    wv_error err;
    CHECK(wv_plan_make(&whole, m, 3, 18, 32, &o, &err) == WV_OK);
    o.tile_x = 56 + 2 * whole.out_halo;
    CHECK(wv_plan_make(&cols, m, 3, 18, 32, &o, &err) == WV_OK);
    CHECK(cols.tiles_x == 5 && cols.tiles_y == 1);
    o.tile_x = 0;
    o.max_bytes = cols.arena_bytes;
    CHECK(wv_plan_make(&p, m, 3, 18, 32, &o, &err) == WV_OK);
    CHECK(p.arena_bytes <= o.max_bytes && p.conv_flops <= cols.conv_flops && p.tiles_y == 1);
    wv_plan_free(&whole);
    wv_plan_free(&cols);
    wv_plan_free(&p);
}

/* A budget that a 158 px tile fits with the trunk taking the first stage: the budget's plan does no
 * more work than that one. Smaller tiles need more memory there (their trunk ends at the attention,
 * the first stage in every tile), so a search assuming memory grows with the tile missed it and
 * planned 12x1 tiles with 7% more work. */
static void test_budget_finds_the_least_work(const wv_model *m)
{
    wv_options o = {158, 158, 0, WV_OUT_UNIT, 0, 0};
    wv_plan p, q;
    wv_error err;
    CHECK(wv_plan_make(&q, m, 2, 45, 80, &o, &err) == WV_OK);
    CHECK(q.trunk_end == m->trunk_end_long);
    o.tile_x = o.tile_y = 0;
    o.max_bytes = q.arena_bytes;
    CHECK(wv_plan_make(&p, m, 2, 45, 80, &o, &err) == WV_OK);
    CHECK(p.arena_bytes <= q.arena_bytes && p.conv_flops <= q.conv_flops);
    wv_plan_free(&p), wv_plan_free(&q);
}

/* The tile segments' one-frame buffers side by side: the plan stacks them in less. */
static size_t tile_scratch_unshared(const wv_plan *p)
{
    size_t sum = 0;
    for (int s = 0; s < p->n_segments; s++)
        sum += 2 * wv_align_up((size_t)p->seg[s].xy_elems * sizeof(float)) +
               wv_align_up((size_t)p->seg[s].t_elems * sizeof(float));
    return sum;
}

/* Output frames are counted in int: the most latent frames that fit plan, one more is refused. */
static void test_frame_count_limit(const wv_model *m)
{
    wv_options o = {0, 0, 0, WV_OUT_UNIT, 0, 0};
    wv_plan p;
    wv_error err;
    int most = (INT32_MAX - 1) / 4 + 1;
    CHECK(wv_plan_make(&p, m, most, 9, 11, &o, &err) == WV_OK && p.frames_out == 1 + 4 * (most - 1));
    wv_plan_free(&p);
    CHECK(wv_plan_make(&p, m, most + 1, 9, 11, &o, &err) == WV_ERR_INVALID);
    CHECK(strstr(err.msg, "would decode to 2147483649 frames, more than 2147483647") != NULL);
    wv_plan_free(&p);
}

static void test_plan(const wv_model *m)
{
    wv_plan p;
    wv_error err;
    wv_options o = {40, 56, 0, WV_OUT_UNIT, 0, 0};
    int halo[WV_MAX_BLOCKS], covered = 0;
    wv_model_halos(m, halo);
    CHECK(halo[m->trunk_end] == 15);
    CHECK(wv_plan_make(&p, m, 3, 9, 11, &o, &err) == WV_OK);
    /* a small frame: the trunk runs on to the first upsample, which starts each tile (segment 0 empty) */
    CHECK(p.trunk_end == m->trunk_end_long && p.seg[0].first_block == p.seg[0].end_block);
    CHECK(p.n_segments == 4 && p.seg[0].halo == 7 && p.seg[1].halo == 12 && p.seg[2].halo == 10 &&
          p.seg[3].halo == 7);
    CHECK(p.core_x == 24 && p.core_y == 40 && p.tiles_x == 4 && p.tiles_y == 2);
    for (int t = 0; t < p.n_tiles; t++) {
        const wv_tile *tl = &p.tiles[t];
        covered += (tl->core.y.hi - tl->core.y.lo) * (tl->core.x.hi - tl->core.x.lo);
        CHECK(tl->region[3].y.lo <= tl->core.y.lo && tl->region[3].y.hi >= tl->core.y.hi);
    }
    CHECK(covered == p.H * p.W);
    CHECK(p.buffers[WV_BUF_TILE_SCRATCH].bytes < tile_scratch_unshared(&p));
    CHECK(p.arena_bytes % WV_ARENA_ALIGN == 0);
    CHECK(p.buffers[WV_BUF_WEIGHT_SCRATCH].bytes == 0); /* the CPU backend turns no weights */
    wv_plan_free(&p);
    test_weight_scratch(m, &o);
    test_least_work_split(m);
    test_budget_finds_the_least_work(m);
    o.tile_x = o.tile_y = 0;
    o.max_bytes = 1000;
    CHECK(wv_plan_make(&p, m, 3, 9, 11, &o, &err) == WV_ERR_NOMEM && strstr(err.msg, "budget") != NULL);
    wv_plan_free(&p);
    o.tile_x = 10;
    o.max_bytes = 0;
    CHECK(wv_plan_make(&p, m, 3, 9, 11, &o, &err) == WV_ERR_INVALID);
    wv_plan_free(&p);
    test_frame_count_limit(m);
}

static wv_status decode_with(const wv_model *m, const float *lat, int T, int h, int w, const wv_options *o, void *out,
                             wv_stats *st, wv_error *err)
{
    wv_plan p;
    wv_status s = wv_plan_make(&p, m, T, h, w, o, err);
    if (!s) s = decode_planned(m, &p, lat, o, out, st, err);
    wv_plan_free(&p);
    return s;
}

static wv_status decode(const wv_model *m, const float *lat, int T, int h, int w, int tile, float *out, wv_stats *st,
                        wv_error *err)
{
    wv_options o = {tile, tile, 0, WV_OUT_RAW, 0, 0};
    return decode_with(m, lat, T, h, w, &o, out, st, err);
}

/* The trunk runs on to the first upsample where that costs no memory: less work than the trunk that
 * ends at the attention (whose tiles start with 15 px halos), no more memory, and the same decode;
 * on a large frame in small tiles, where its whole-frame caches would set the peak, it does not. */
static void test_trunk_cut(const wv_model *m, const float *lat, int T, int h, int w, const float *tiled,
                           size_t n_out)
{
    wv_model short_trunk = *m;
    wv_options o = {40, 40, 0, WV_OUT_RAW, 0, 0};
    const wv_block *up = &m->blocks[m->trunk_end_long];
    float *out = (float *)malloc(n_out * sizeof(float));
    float *ends = (float *)calloc(n_out, sizeof(float)), *ends_short = (float *)calloc(n_out, sizeof(float));
    wv_plan p, q;
    wv_stats st;
    wv_error err;
    short_trunk.trunk_end_long = m->trunk_end;
    CHECK(wv_plan_make(&p, m, T, h, w, &o, &err) == WV_OK && wv_plan_make(&q, &short_trunk, T, h, w, &o, &err) == WV_OK);
    CHECK(p.trunk_end == m->trunk_end_long && q.trunk_end == m->trunk_end && q.seg[0].halo == 15);
    CHECK(p.conv_flops < q.conv_flops && p.arena_bytes <= q.arena_bytes && p.n_tiles == q.n_tiles);
    /* the upsample's time conv runs in segment 0's grid, its cache sized for it (not segment 1's) */
    CHECK(up->kind == WV_BLOCK_UP3D &&
          p.buffers[WV_BUF_CACHE0 + up->conv[WV_UP_TIME_CONV].cache_slot].bytes ==
              wv_align_up((size_t)wv_cache_frames(m->backend, &up->conv[WV_UP_TIME_CONV]) *
                          (size_t)((imin(h, p.core_y / 8 + 2 * p.seg[0].halo) + 2) *
                                   (imin(w, p.core_x / 8 + 2 * p.seg[0].halo) + 2)) *
                          (size_t)up->conv[WV_UP_TIME_CONV].cin * sizeof(float)));
    wv_plan_free(&p), wv_plan_free(&q);
    CHECK(decode(&short_trunk, lat, T, h, w, 40, out, &st, &err) == WV_OK);
    CHECK(max_abs_diff(out, tiled, n_out) < 1e-5f);
    o.end_frame = 1; /* two sequences: each zeroes the caches of both trunks' phases */
    CHECK(decode_with(m, lat, T, h, w, &o, ends, &st, &err) == WV_OK);
    CHECK(decode_with(&short_trunk, lat, T, h, w, &o, ends_short, &st, &err) == WV_OK);
    CHECK(max_abs_diff(ends_short, ends, n_out) < 1e-5f);
    free(ends), free(ends_short);
    CHECK(wv_plan_make(&p, m, 1, 64, 64, &o, &err) == WV_OK);
    CHECK(p.n_tiles > 1 && p.trunk_end == m->trunk_end);
    wv_plan_free(&p);
    free(out);
}

/* A backend keeping the trunk output in its host memory (as the CUDA one does): the arena holds none
 * of it, the result is the same to the bit, and its allocation failing fails cleanly. */
static void test_trunk_on_host(const wv_model *m, const float *lat, int T, int h, int w, const float *tiled,
                               size_t n_out)
{
    wv_backend hosts = *m->backend;
    wv_model with = *m;
    wv_options o = {40, 40, 0, WV_OUT_RAW, 0, 0};
    size_t frame = (size_t)h * w * m->blocks[m->trunk_end - 1].cout * sizeof(float);
    float *out = (float *)malloc(n_out * sizeof(float));
    wv_plan p;
    wv_stats st;
    wv_error err;
    hosts.trunk_out_host = 1;
    with.backend = &hosts;
    CHECK(wv_plan_make(&p, &with, T, h, w, &o, &err) == WV_OK);
    CHECK(p.n_tiles > 1 && p.trunk_host_bytes == (size_t)T * frame && p.buffers[WV_BUF_TRUNK_OUT].bytes == 0);
    wv_plan_free(&p);
    CHECK(decode(&with, lat, T, h, w, 40, out, &st, &err) == WV_OK);
    CHECK(max_abs_diff(out, tiled, n_out) == 0.0f);
    hosts.fail_nth_alloc(2); /* the arena, then the host memory */
    CHECK(decode(&with, lat, T, h, w, 40, out, &st, &err) == WV_ERR_NOMEM);
    CHECK(starts_with(err.msg, "the first blocks' whole-frame output, kept on the host: out of host memory "));
    hosts.fail_nth_alloc(0);
    CHECK(decode(&with, lat, T, h, w, 0, out, &st, &err) == WV_OK); /* one tile streams: no host copy */
    free(out);
}

/* The CPU's conv as a backend keeping its caches (WV_CACHE_KEPT) runs one: every tap at once, then
 * the new frame in the oldest one's place (the CPU's own layout: a frame per slot). */
static const wv_backend *g_keeper;

static void conv_keeping_frames(void *ctx, const wv_conv *cv, wv_grid g, const void *const *frames, int first,
                                int last, void *y, int accumulate)
{
    wv_grid whole = {g.h + 2 * g.pad, g.w + 2 * g.pad, 0};
    g_keeper->conv(ctx, cv, g, frames, first, last, y, accumulate);
    if (cv->kt > 1 && kept_if_square(cv) == WV_CACHE_KEPT)
        g_keeper->copy_region(ctx, frames[cv->kt - 1], whole, 0, 0, (void *)frames[0], whole, cv->cin, 1);
}

/* Causal caches kept as rings of kt frames (how the CUDA backend keeps its 3-d convs), for every
 * conv or mixed with caches of kt - 1 (taps apart, the CPU's own way) or with caches the backend
 * keeps (the driver never writing into them): the same decode to the bit, tiled or not, and the
 * rings take one frame more per cache. */
static void test_cache_layouts(const wv_model *m, const float *lat, int T, int h, int w, const float *whole,
                               const float *tiled, size_t n_out)
{
    wv_cache_layout (*const layouts[])(const wv_conv *) = {taps_never_apart, taps_apart_if_square, kept_if_square};
    wv_options o = {0, 0, 0, WV_OUT_RAW, 0, 0};
    float *out = (float *)malloc(n_out * sizeof(float));
    wv_plan apart, rings;
    wv_stats st;
    wv_error err;
    g_keeper = m->backend;
    for (int i = 0; i < 3; i++) {
        wv_backend be = *m->backend;
        wv_model with = *m;
        be.cache_layout = layouts[i];
        if (layouts[i] == kept_if_square) be.conv = conv_keeping_frames;
        with.backend = &be;
        CHECK(decode(&with, lat, T, h, w, 0, out, &st, &err) == WV_OK);
        CHECK(max_abs_diff(out, whole, n_out) == 0.0f);
        CHECK(decode(&with, lat, T, h, w, 40, out, &st, &err) == WV_OK);
        CHECK(max_abs_diff(out, tiled, n_out) == 0.0f);
        if (i) continue;
        CHECK(wv_plan_make(&apart, m, T, h, w, &o, &err) == WV_OK);
        CHECK(wv_plan_make(&rings, &with, T, h, w, &o, &err) == WV_OK);
        for (int c = 0; c < m->n_cache_slots; c++)
            CHECK(rings.buffers[WV_BUF_CACHE0 + c].bytes > apart.buffers[WV_BUF_CACHE0 + c].bytes);
        CHECK(rings.arena_bytes > apart.arena_bytes);
        wv_plan_free(&apart), wv_plan_free(&rings);
    }
    free(out);
}

/* The conv op of a backend with a limit on conv operands, recording the largest it is handed. */
static const wv_backend *g_limited;
static int64_t g_largest_operand;

/* The measure the CUDA backend gives cuDNN's convolutions. */
static int64_t operand_as_in_a_library(void *ctx, const wv_conv *cv)
{
    (void)ctx;
    return (cv->kt > 1 && g_limited->cache_layout(cv) == WV_CACHE_RING ? cv->kt : 1) *
           (cv->cin > cv->cout ? cv->cin : cv->cout);
}

static void conv_recording_operands(void *ctx, const wv_conv *cv, wv_grid g, const void *const *frames, int first,
                                    int last, void *y, int accumulate)
{
    int64_t e = operand_as_in_a_library(ctx, cv) * wv_grid_positions(g);
    if (e > g_largest_operand) g_largest_operand = e;
    wv_backend_cpu()->conv(ctx, cv, g, frames, first, last, y, accumulate);
}

/* A backend whose convolutions take operands of at most max_conv_elems (cuDNN indexes in int): an
 * untiled request is tiled to stay within it, to the same decode, and a frame whose trunk alone
 * passes it is refused when planned, not after the trunk has run. */
static void test_conv_operand_limit(const wv_model *m)
{
    int T = 2, h = 24, w = 20, F = 1 + 4 * (T - 1); /* larger than its halos: tiles shrink operands */
    size_t n_out = (size_t)F * 8 * h * 8 * w * 3;
    float *lat = rand_floats(4 * (size_t)T * h * w);
    float *whole = (float *)malloc(n_out * sizeof(float)), *out = (float *)malloc(n_out * sizeof(float));
    wv_backend limited = *m->backend;
    wv_model with = *m;
    wv_options o = {0, 0, 0, WV_OUT_RAW, 0, 0};
    wv_plan untiled, p;
    wv_stats st;
    wv_error err;
    CHECK(decode(m, lat, T, h, w, 0, whole, &st, &err) == WV_OK);
    CHECK(wv_plan_make(&untiled, m, T, h, w, &o, &err) == WV_OK);
    CHECK(untiled.trunk_operand == 0 && untiled.tile_operand == 0); /* the CPU's loops: no limit */
    wv_plan_free(&untiled);
    limited.conv_operand = operand_as_in_a_library;
    limited.conv = conv_recording_operands;
    g_limited = &limited;
    with.backend = &limited;
    wv_model_measure_operands(&with);
    CHECK(wv_plan_make(&untiled, &with, T, h, w, &o, &err) == WV_OK); /* no limit yet */
    CHECK(untiled.n_tiles == 1 && untiled.trunk_operand < untiled.tile_operand);
    limited.max_conv_elems = untiled.tile_operand - 1;
    CHECK(wv_plan_make(&p, &with, T, h, w, &o, &err) == WV_OK);
    CHECK(p.n_tiles > 1 && p.shrunk_to_fit && p.tile_operand <= limited.max_conv_elems);
    g_largest_operand = 0;
    CHECK(decode(&with, lat, T, h, w, 0, out, &st, &err) == WV_OK);
    CHECK(g_largest_operand > 0 && g_largest_operand <= p.tile_operand);
    CHECK(max_abs_diff(out, whole, n_out) < 1e-5f);
    wv_plan_free(&p);
    limited.max_conv_elems = untiled.trunk_operand - 1;
    CHECK(wv_plan_make(&p, &with, T, h, w, &o, &err) == WV_ERR_INVALID);
    CHECK(strstr(err.msg, "is too large for the cpu backend: a convolution over it has an operand of") != NULL);
    wv_plan_free(&p);
    wv_plan_free(&untiled);
    free(lat), free(whole), free(out);
}

/* A backend that keeps something current in the thread (a CUDA device): the progress callback runs
 * released, once per step, and every step's end takes the thread back; without a callback nothing is
 * released. */
static int g_released, g_releases, g_callbacks, g_held_callbacks;

static void release_counted(void *ctx)
{
    (void)ctx;
    g_released = 1;
    g_releases++;
}

static wv_status end_step_taking_back(void *ctx, wv_error *err)
{
    g_released = 0;
    return wv_backend_cpu()->end_step(ctx, err);
}

static int progress_seeing_released(void *user, int64_t done, int64_t total)
{
    (void)user, (void)done, (void)total;
    g_callbacks++;
    g_held_callbacks += !g_released;
    return 0;
}

static void test_progress_runs_with_the_thread_released(const wv_model *m, const float *lat, int T, int h, int w,
                                                        float *out)
{
    wv_backend be = *m->backend;
    wv_model with = *m;
    wv_options o = {40, 40, 0, WV_OUT_RAW, 0, 0};
    float mean[4] = {0}, stdv[4] = {1, 1, 1, 1};
    wv_view v = {lat, 4, {4, T, h, w}, {4LL * T * h * w, 4LL * h * w, 4LL * w, 4}, WV_F32, 0};
    wv_stats st;
    wv_error err;
    wv_plan p;
    be.release_thread = release_counted;
    be.end_step = end_step_taking_back;
    with.backend = &be;
    CHECK(wv_plan_make(&p, &with, T, h, w, &o, &err) == WV_OK);
    g_released = g_releases = g_callbacks = g_held_callbacks = 0;
    CHECK(wv_decode(&with, &p, &v, 0, mean, stdv, &o, out, progress_seeing_released, NULL, &st, &err) == WV_OK);
    CHECK(g_callbacks > 1 && g_releases == g_callbacks && g_held_callbacks == 0 && !g_released);
    g_releases = 0;
    CHECK(wv_decode(&with, &p, &v, 0, mean, stdv, &o, out, NULL, NULL, &st, &err) == WV_OK);
    CHECK(g_releases == 0);
    wv_plan_free(&p);
}

/* The output types of one tiled decode: the [0, 1] image as float32 and as uint8, (v * 255 + 0.5)
 * truncated, byte for byte; a plan is made for one type (its staging is sized by it) and a decode
 * asking for another, or a plan for no type at all, is refused. */
static void test_output_types(const wv_model *m, const float *lat, int T, int h, int w, size_t n_out)
{
    float *unit = (float *)malloc(n_out * sizeof(float));
    unsigned char *u8 = (unsigned char *)malloc(n_out);
    wv_options o = {40, 40, 0, WV_OUT_UNIT, 0, 0};
    size_t wrong = 0;
    wv_plan p, q;
    wv_stats st;
    wv_error err;
    CHECK(decode_with(m, lat, T, h, w, &o, unit, &st, &err) == WV_OK);
    o.output = WV_OUT_U8;
    CHECK(decode_with(m, lat, T, h, w, &o, u8, &st, &err) == WV_OK);
    for (size_t i = 0; i < n_out; i++) wrong += u8[i] != (unsigned char)(unit[i] * 255.0f + 0.5f);
    CHECK(wrong == 0);
    CHECK(wv_plan_make(&p, m, T, h, w, &o, &err) == WV_OK);
    o.output = WV_OUT_UNIT;
    CHECK(wv_plan_make(&q, m, T, h, w, &o, &err) == WV_OK);
    CHECK(p.output == WV_OUT_U8 && 4 * p.step_out_bytes == q.step_out_bytes);
    CHECK(decode_planned(m, &p, lat, &o, unit, &st, &err) == WV_ERR_INVALID);
    CHECK(strstr(err.msg, "the plan was made for output type 2, the decode asks for 0") != NULL);
    wv_plan_free(&p), wv_plan_free(&q);
    o.output = (wv_output_mode)3;
    CHECK(wv_plan_make(&p, m, T, h, w, &o, &err) == WV_ERR_INVALID && strstr(err.msg, "unknown output type 3"));
    wv_plan_free(&p);
    free(unit), free(u8);
}

/* wv_decode's own checks of the latents' view (the Python boundary checks them too). */
static void test_latent_views(const wv_model *m, const float *lat, int T, int h, int w)
{
    float mean[4] = {0}, stdv[4] = {1, 1, 1, 1};
    float *out = (float *)malloc(sizeof(float) * (size_t)(1 + 4 * (T - 1)) * 8 * h * 8 * w * 3);
    wv_options o = {0, 0, 0, WV_OUT_RAW, 0, 0};
    wv_view v = {lat, 4, {4, T, h, w}, {4LL * T * h * w, 4LL * h * w, 4LL * w, 4}, WV_F32, 0};
    wv_stats st;
    wv_error err;
    wv_plan p;
    CHECK(wv_plan_make(&p, m, T, h, w, &o, &err) == WV_OK);
    v.data = lat + w - 1; /* the rows read right to left */
    v.strides[3] = -4;
    CHECK(wv_decode(m, &p, &v, 0, mean, stdv, &o, out, NULL, NULL, &st, &err) == WV_ERR_INVALID);
    CHECK(strstr(err.msg, "negative stride on axis 3") != NULL);
    v.data = lat;
    v.strides[3] = 4;
    v.shape[2] = h + 1;
    CHECK(wv_decode(m, &p, &v, 0, mean, stdv, &o, out, NULL, NULL, &st, &err) == WV_ERR_INVALID);
    CHECK(strstr(err.msg, "do not match the plan") != NULL);
    v.shape[2] = h;
    v.data = NULL;
    CHECK(wv_decode(m, &p, &v, 0, mean, stdv, &o, out, NULL, NULL, &st, &err) == WV_ERR_INVALID);
    CHECK(strstr(err.msg, "null data pointer") != NULL);
    wv_plan_free(&p);
    free(out);
}

static void test_decode(const wv_model *m)
{
    int T = 3, h = 5, w = 6, F = 1 + 4 * (T - 1);
    size_t n_out = (size_t)F * 8 * h * 8 * w * 3;
    float *lat = rand_floats(4 * (size_t)T * h * w);
    float *whole = (float *)malloc(n_out * sizeof(float)), *tiled = (float *)malloc(n_out * sizeof(float));
    wv_stats st;
    wv_error err;
    CHECK(decode(m, lat, T, h, w, 0, whole, &st, &err) == WV_OK);
    CHECK(decode(m, lat, T, h, w, 40, tiled, &st, &err) == WV_OK);
    CHECK(max_abs_diff(whole, tiled, n_out) < 1e-5f);
    for (int n = 1; n <= 3; n++) { /* an allocation failing anywhere: a clean NOMEM, nothing leaked */
        wv_backend_cpu()->fail_nth_alloc(n);
        CHECK(decode(m, lat, T, h, w, 40, tiled, &st, &err) == (n == 1 ? WV_ERR_NOMEM : WV_OK));
        CHECK(n > 1 || starts_with(err.msg, "the decode's working memory: out of host memory allocating "));
    }
    wv_backend_cpu()->fail_nth_alloc(0);
    test_latent_views(m, lat, T, h, w);
    test_output_types(m, lat, T, h, w, n_out);
    test_trunk_on_host(m, lat, T, h, w, tiled, n_out);
    test_trunk_cut(m, lat, T, h, w, tiled, n_out);
    test_cache_layouts(m, lat, T, h, w, whole, tiled, n_out);
    test_progress_runs_with_the_thread_released(m, lat, T, h, w, tiled);
    free(lat), free(whole), free(tiled);
}

/* Every op against its naive loop. A 23 x 29 frame has convolution rows for several items a thread,
 * the last one short; an 80 x 80 one, blocks of the most rows (CPU_ROW_BLOCK) for up to 3 threads. */
static void test_ops(void)
{
    wv_grid small = {5, 7, 1}, large = {23, 29, 1}, larger = {80, 80, 1};
    test_conv(1, 3, TAPS_AT_ONCE, 1, larger);
    for (int kt = 1; kt <= 3; kt += 2)
        for (int k = 1; k <= 3; k += 2)
            for (int how = TAPS_AT_ONCE; how <= (kt > 1 ? TAPS_AFTER_FIRST : TAPS_AT_ONCE); how++)
                for (int accumulate = 0; accumulate <= 1; accumulate++) {
                    test_conv(kt, k, how, accumulate, small);
                    test_conv(kt, k, how, accumulate, large);
                }
    test_rms_norm();
    {
        wv_rect whole = {{0, 6}, {0, 7}}, whole2 = {{0, 12}, {0, 14}};
        wv_rect inner = {{1, 5}, {2, 6}}, inner2 = {{3, 9}, {5, 11}}; /* odd starts: phase 1 first */
        wv_rect corner = {{0, 3}, {0, 4}}, corner2 = {{0, 5}, {0, 7}};
        wv_rect edge = {{3, 6}, {4, 7}}, edge2 = {{7, 12}, {9, 14}};
        test_subpixel(whole, whole2);
        test_subpixel(inner, inner2);
        test_subpixel(corner, corner2);
        test_subpixel(edge, edge2);
    }
    test_copy_channels();
    test_attention();
}

int main(void)
{
    weight_set *ws = (weight_set *)calloc(1, sizeof *ws);
    wv_model m;
    wv_error err = {WV_OK, ""};
    test_getenv();
    test_size_text();
    test_fail_in();
    test_team();
    test_ops();                      /* in the caller alone */
    g_op_ctx = begun_cpu_ctx();      /* and split over a decode call's threads */
    test_ops();
    end_cpu_ctx(g_op_ctx);
    g_op_ctx = NULL;
    test_ring_slots();
    test_dtype_conversion();
    CHECK(wv_model_expected_keys(8, 4, add_key, ws) == 108);
    test_model_errors(ws);
    CHECK(wv_model_build(&m, wv_backend_cpu(), -1, ws->views, ws->n, &err) == WV_OK);
    test_plan(&m);
    test_decode(&m);
    test_conv_operand_limit(&m);
    wv_model_free(&m);
    free_weights(ws);
    free(ws);
    for (int i = 0; i < wv_backend_op_count(); i++) CHECK(wv_backend_supports(wv_backend_cpu(), i));
    printf("%d passed, %d failed\n", g_checks - g_failures, g_failures);
    return g_failures ? 1 : 0;
}
