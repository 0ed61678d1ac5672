/* What the C test programs share: the check, seeded random numbers, and a decoder's weights made up
 * for a test (every key the model expects, random but well scaled). */
#ifndef WV_TEST_UTIL_H
#define WV_TEST_UTIL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wv_core.h"

static int g_checks, g_failures;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        g_checks++;                                                                   \
        if (!(cond)) {                                                                \
            g_failures++;                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                             \
    } while (0)

static inline int starts_with(const char *s, const char *prefix) { return !strncmp(s, prefix, strlen(prefix)); }

static uint32_t g_rng = 12345u;

static float frand(void) /* uniform in [-1, 1) */
{
    g_rng = g_rng * 1664525u + 1013904223u;
    return (float)(g_rng >> 8) / (float)(1u << 23) - 1.0f;
}

static float *rand_floats(size_t n)
{
    float *p = (float *)malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = frand();
    return p;
}

typedef struct {
    wv_named_view views[160];
    char keys[160][96];
    float *data[160];
    int n;
} weight_set;

/* wv_model_expected_keys' callback: one float32 tensor per key, gammas near 1, weights scaled by
 * their fan-in. */
static void add_key(void *user, const char *key, int ndim, const int64_t *shape)
{
    weight_set *ws = (weight_set *)user;
    wv_named_view *nv = &ws->views[ws->n];
    int64_t numel = 1, fan_in = 1;
    for (int d = 0; d < ndim; d++) numel *= shape[d];
    for (int d = 1; d < ndim; d++) fan_in *= shape[d];
    snprintf(ws->keys[ws->n], sizeof ws->keys[0], "%s", key);
    ws->data[ws->n] = rand_floats((size_t)numel);
    if (strstr(key, "gamma"))
        for (int64_t i = 0; i < numel; i++) ws->data[ws->n][i] = 1.0f + 0.1f * ws->data[ws->n][i];
    else if (!strstr(key, "bias"))
        for (int64_t i = 0; i < numel; i++) ws->data[ws->n][i] *= 1.7f / sqrtf((float)fan_in);
    nv->key = ws->keys[ws->n];
    nv->view.data = ws->data[ws->n];
    nv->view.ndim = ndim;
    nv->view.dtype = WV_F32;
    for (int d = ndim - 1, step = 4; d >= 0; d--) {
        nv->view.shape[d] = shape[d];
        nv->view.strides[d] = step;
        step *= (int)shape[d];
    }
    ws->n++;
}

static void free_weights(weight_set *ws)
{
    for (int i = 0; i < ws->n; i++) free(ws->data[i]);
}

/* Decodes latents lat [4][T][h][w] (float32, contiguous; the plan's T, h, w) with fixed statistics,
 * following plan p, and checks that the decode used exactly the memory the plan said. */
/* The progress callback decode_planned passes (NULL: none). */
static wv_progress_fn g_progress;

static wv_status decode_planned(const wv_model *m, const wv_plan *p, const float *lat, const wv_options *o,
                                void *out, wv_stats *st, wv_error *err)
{
    float mean[4] = {0.1f, -0.2f, 0.3f, 0.0f}, stdv[4] = {1.0f, 2.0f, 0.5f, 1.5f};
    int T = p->T, h = p->h, w = p->w;
    wv_view v = {lat, 4, {4, T, h, w}, {4LL * T * h * w, 4LL * h * w, 4LL * w, 4}, WV_F32, 0};
    wv_status s = wv_decode(m, p, &v, 0, mean, stdv, o, out, g_progress, NULL, st, err);
    if (!s) CHECK(st->arena_high_water == p->arena_bytes);
    return s;
}

#endif
