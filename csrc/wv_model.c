/* The Wan 2.1 decoder as tables: the block list (built from the config) and, per block kind,
 * the parameters it owns (key suffix, shape, role). Every checkpoint key is derived from them. */
#include "wv_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Wan 2.1 architecture constants: the public WanVAE's dim_mult, and its temperal_downsample reversed. */
static const int DIM_MULT[] = {1, 2, 4, 4};
static const int TEMPORAL_UPSAMPLE[] = {1, 1, 0};
enum { N_STAGES = 4, RES_BLOCKS_PER_STAGE = 3 /* num_res_blocks + 1 */ };

typedef enum { ROLE_WEIGHT, ROLE_BIAS, ROLE_GAMMA } param_role;

/* Shape spec letters: i = cin, o = cout, D = 2 cin, Q = 3 cin, digits are literal extents. */
typedef struct {
    const char *suffix;
    const char *shape;
    param_role role;
    int slot;  /* conv slot for WEIGHT/BIAS, gamma slot for GAMMA */
    int flags; /* PARAM_* */
} param_spec;

enum {
    PARAM_ONLY_IF_REMAP = 1, /* present only when cin != cout (the residual shortcut) */
    PARAM_SUBPIXEL = 2       /* a resample conv: run sub-pixel (see wv_conv) */
};

#define MAX_PARAMS_PER_KIND 8

typedef struct {
    const char *name;
    param_spec params[MAX_PARAMS_PER_KIND];
} kind_spec;

static const kind_spec KINDS[WV_BLOCK_KIND_COUNT] = {
    [WV_BLOCK_POINTWISE] = {"pointwise",
                            {{"weight", "oi111", ROLE_WEIGHT, WV_CONV, 0}, {"bias", "o", ROLE_BIAS, WV_CONV, 0}}},
    [WV_BLOCK_CONV] = {"conv",
                       {{"weight", "oi333", ROLE_WEIGHT, WV_CONV, 0}, {"bias", "o", ROLE_BIAS, WV_CONV, 0}}},
    [WV_BLOCK_RES] = {"residual",
                      {{"residual.0.gamma", "i111", ROLE_GAMMA, WV_RES_NORM1, 0},
                       {"residual.2.weight", "oi333", ROLE_WEIGHT, WV_RES_CONV1, 0},
                       {"residual.2.bias", "o", ROLE_BIAS, WV_RES_CONV1, 0},
                       {"residual.3.gamma", "o111", ROLE_GAMMA, WV_RES_NORM2, 0},
                       {"residual.6.weight", "oo333", ROLE_WEIGHT, WV_RES_CONV2, 0},
                       {"residual.6.bias", "o", ROLE_BIAS, WV_RES_CONV2, 0},
                       {"shortcut.weight", "oi111", ROLE_WEIGHT, WV_RES_SHORTCUT, PARAM_ONLY_IF_REMAP},
                       {"shortcut.bias", "o", ROLE_BIAS, WV_RES_SHORTCUT, PARAM_ONLY_IF_REMAP}}},
    [WV_BLOCK_ATTN] = {"attention",
                       {{"norm.gamma", "i11", ROLE_GAMMA, WV_ATTN_NORM, 0},
                        {"to_qkv.weight", "Qi11", ROLE_WEIGHT, WV_ATTN_QKV, 0},
                        {"to_qkv.bias", "Q", ROLE_BIAS, WV_ATTN_QKV, 0},
                        {"proj.weight", "ii11", ROLE_WEIGHT, WV_ATTN_PROJ, 0},
                        {"proj.bias", "i", ROLE_BIAS, WV_ATTN_PROJ, 0}}},
    [WV_BLOCK_UP2D] = {"upsample2d",
                       {{"resample.1.weight", "oi33", ROLE_WEIGHT, WV_UP_RESAMPLE, PARAM_SUBPIXEL},
                        {"resample.1.bias", "o", ROLE_BIAS, WV_UP_RESAMPLE, 0}}},
    [WV_BLOCK_UP3D] = {"upsample3d",
                       {{"resample.1.weight", "oi33", ROLE_WEIGHT, WV_UP_RESAMPLE, PARAM_SUBPIXEL},
                        {"resample.1.bias", "o", ROLE_BIAS, WV_UP_RESAMPLE, 0},
                        {"time_conv.weight", "Di311", ROLE_WEIGHT, WV_UP_TIME_CONV, 0},
                        {"time_conv.bias", "D", ROLE_BIAS, WV_UP_TIME_CONV, 0}}},
    [WV_BLOCK_HEAD] = {"head",
                       {{"0.gamma", "i111", ROLE_GAMMA, WV_HEAD_NORM, 0},
                        {"2.weight", "oi333", ROLE_WEIGHT, WV_CONV, 0},
                        {"2.bias", "o", ROLE_BIAS, WV_CONV, 0}}},
};

static int spec_count(wv_block_kind k)
{
    int n = 0;
    while (n < MAX_PARAMS_PER_KIND && KINDS[k].params[n].suffix) n++;
    return n;
}

static int spec_applies(const param_spec *ps, const wv_block *b)
{
    return !(ps->flags & PARAM_ONLY_IF_REMAP) || b->cin != b->cout;
}

static int spec_shape(const param_spec *ps, const wv_block *b, int64_t *shape)
{
    int n = 0;
    for (const char *c = ps->shape; *c; c++) {
        switch (*c) {
        case 'i': shape[n++] = b->cin; break;
        case 'o': shape[n++] = b->cout; break;
        case 'D': shape[n++] = 2 * (int64_t)b->cin; break;
        case 'Q': shape[n++] = 3 * (int64_t)b->cin; break;
        default: shape[n++] = *c - '0'; break;
        }
    }
    return n;
}

/* One of a model's parameters, as next_param walks them from PARAMS_BEGIN: every block's specs that
 * apply, in table order. */
typedef struct {
    int block, spec;
    const param_spec *ps;
    char key[96];
    int64_t shape[WV_MAX_DIMS];
    int nd;
} param_iter;

static const param_iter PARAMS_BEGIN = {0, -1, NULL, {0}, {0}, 0};

static int next_param(const wv_model *m, param_iter *it)
{
    while (it->block < m->n_blocks) {
        const wv_block *b = &m->blocks[it->block];
        if (++it->spec < spec_count(b->kind)) {
            it->ps = &KINDS[b->kind].params[it->spec];
            if (!spec_applies(it->ps, b)) continue;
            it->nd = spec_shape(it->ps, b, it->shape);
            snprintf(it->key, sizeof it->key, "%s%s", b->prefix, it->ps->suffix);
            return 1;
        }
        it->block++;
        it->spec = -1;
    }
    return 0;
}

/* Element offset of each parameter in the model's one weight allocation, by block and spec. */
typedef int64_t param_offsets[WV_MAX_BLOCKS][MAX_PARAMS_PER_KIND];

static void add_block(wv_model *m, wv_block_kind kind, const char *prefix, int cin, int cout)
{
    wv_block *b = &m->blocks[m->n_blocks++];
    memset(b, 0, sizeof *b);
    b->kind = kind;
    snprintf(b->prefix, sizeof b->prefix, "%s", prefix);
    b->cin = cin;
    b->cout = cout;
}

/* The decoder's block list, from dim and z_dim: conv2, decoder.conv1, middle (res, attention, res), four
 * stages of three residual blocks with an upsample after the first three, head. */
static void build_blocks(wv_model *m, int dim, int z)
{
    int dims[N_STAGES + 1];
    char prefix[48];
    int up = 0;
    dims[0] = dim * DIM_MULT[N_STAGES - 1];
    for (int i = 0; i < N_STAGES; i++) dims[i + 1] = dim * DIM_MULT[N_STAGES - 1 - i];

    m->dim = dim;
    m->z_dim = z;
    m->n_blocks = 0;
    add_block(m, WV_BLOCK_POINTWISE, "conv2.", z, z);
    add_block(m, WV_BLOCK_CONV, "decoder.conv1.", z, dims[0]);
    add_block(m, WV_BLOCK_RES, "decoder.middle.0.", dims[0], dims[0]);
    add_block(m, WV_BLOCK_ATTN, "decoder.middle.1.", dims[0], dims[0]);
    m->trunk_end = m->n_blocks;
    add_block(m, WV_BLOCK_RES, "decoder.middle.2.", dims[0], dims[0]);
    for (int s = 0; s < N_STAGES; s++) {
        int cin = s == 0 ? dims[s] : dims[s] / 2; /* the previous upsample halved the channels */
        for (int r = 0; r < RES_BLOCKS_PER_STAGE; r++) {
            snprintf(prefix, sizeof prefix, "decoder.upsamples.%d.", up++);
            add_block(m, WV_BLOCK_RES, prefix, cin, dims[s + 1]);
            cin = dims[s + 1];
        }
        if (s < N_STAGES - 1) {
            if (s == 0) m->trunk_end_long = m->n_blocks; /* the first upsample */
            snprintf(prefix, sizeof prefix, "decoder.upsamples.%d.", up++);
            add_block(m, TEMPORAL_UPSAMPLE[s] ? WV_BLOCK_UP3D : WV_BLOCK_UP2D, prefix, dims[s + 1],
                      dims[s + 1] / 2);
        }
    }
    add_block(m, WV_BLOCK_HEAD, "decoder.head.", dims[N_STAGES], WV_RGB);
}

int wv_model_expected_keys(int dim, int z_dim, wv_key_fn fn, void *user)
{
    wv_model *m = (wv_model *)calloc(1, sizeof *m);
    param_iter it = PARAMS_BEGIN;
    int count = 0;
    if (!m) return -1;
    build_blocks(m, dim, z_dim);
    for (; next_param(m, &it); count++)
        if (fn) fn(user, it.key, it.nd, it.shape);
    free(m);
    return count;
}

static const wv_named_view *find_weight(const wv_named_view *w, int n, const char *key, int *index)
{
    for (int i = 0; i < n; i++)
        if (strcmp(w[i].key, key) == 0) {
            *index = i;
            return &w[i];
        }
    return NULL;
}

static void format_shape(char *buf, size_t size, int nd, const int64_t *shape)
{
    size_t used = 0;
    used += (size_t)snprintf(buf + used, size - used, "(");
    for (int i = 0; i < nd && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (used < size) snprintf(buf + used, size - used, ")");
}

static wv_status infer_config(const wv_named_view *w, int n, int *dim, int *z, wv_error *err)
{
    int idx;
    const wv_named_view *c1 = find_weight(w, n, "decoder.conv1.weight", &idx);
    if (!c1)
        return wv_fail(err, WV_ERR_INVALID, "missing weight 'decoder.conv1.weight' (needed to infer "
                                            "the decoder's width)");
    if (c1->view.ndim != 5 || c1->view.shape[0] % 4 != 0 || c1->view.shape[0] < 4 ||
        c1->view.shape[1] < 1 || c1->view.shape[0] > WV_MAX_WIDTH || c1->view.shape[1] > WV_MAX_WIDTH) {
        char s[96];
        format_shape(s, sizeof s, c1->view.ndim, c1->view.shape);
        return wv_fail(err, WV_ERR_INVALID,
                       "weight 'decoder.conv1.weight' has shape %s; expected (4*dim, z_dim, 3, 3, 3)", s);
    }
    *dim = (int)(c1->view.shape[0] / 4);
    *z = (int)c1->view.shape[1];
    return WV_OK;
}

/* Conv ps->slot of block b, shaped by its weight's spec. */
static void shape_conv(wv_block *b, const param_spec *ps, const int64_t *shape, int nd)
{
    wv_conv *cv = &b->conv[ps->slot];
    b->has_conv[ps->slot] = 1;
    cv->cout = (int)shape[0];
    cv->cin = (int)shape[1];
    cv->kt = nd == 5 ? (int)shape[2] : 1;
    cv->kh = (int)shape[nd - 2];
    cv->kw = (int)shape[nd - 1];
    if (ps->flags & PARAM_SUBPIXEL) {
        cv->subpixel = 1;
        cv->kh = cv->kw = 2;
        cv->cout *= WV_SUBPIXEL_PHASES;
    }
}

/* Every parameter's offset (and each conv's shape); returns the elements the allocation spans. */
static int64_t layout_params(wv_model *m, param_offsets off)
{
    param_iter it = PARAMS_BEGIN;
    int64_t end = 0;
    while (next_param(m, &it)) {
        wv_block *b = &m->blocks[it.block];
        const wv_conv *cv = &b->conv[it.ps->slot];
        int64_t numel = 1;
        for (int d = 0; d < it.nd; d++) numel *= it.shape[d];
        m->n_params += numel;
        if (it.ps->role == ROLE_WEIGHT) {
            shape_conv(b, it.ps, it.shape, it.nd);
            numel = m->backend->packed_weight_elems(cv);
        } else if (it.ps->role == ROLE_BIAS) {
            numel = cv->cout; /* a sub-pixel conv's: once per phase */
        }
        off[it.block][it.spec] = end;
        end = wv_param_align(end + numel);
    }
    return end;
}

static void assign_cache_slots(wv_model *m)
{
    m->n_cache_slots = 0;
    for (int bi = 0; bi < m->n_blocks; bi++)
        for (int c = 0; c < WV_BLOCK_MAX_CONVS; c++) {
            wv_conv *cv = &m->blocks[bi].conv[c];
            cv->cache_slot = m->blocks[bi].has_conv[c] && cv->kt > 1 ? m->n_cache_slots++ : -1;
            cv->id = bi * WV_BLOCK_MAX_CONVS + c;
        }
}

int wv_model_conv_name(const wv_model *m, int id, char *buf, size_t size)
{
    int bi = id / WV_BLOCK_MAX_CONVS, slot = id % WV_BLOCK_MAX_CONVS;
    const wv_block *b;
    if (id < 0 || bi >= m->n_blocks || !m->blocks[bi].has_conv[slot]) return 0;
    b = &m->blocks[bi];
    for (int i = 0; i < spec_count(b->kind); i++) {
        const param_spec *ps = &KINDS[b->kind].params[i];
        if (ps->role != ROLE_WEIGHT || ps->slot != slot) continue;
        size_t lead = strlen(ps->suffix) - strlen("weight"); /* "residual.2." -> "residual.2" */
        if (lead) snprintf(buf, size, "%s%.*s", b->prefix, (int)lead - 1, ps->suffix);
        else snprintf(buf, size, "%.*s", (int)strlen(b->prefix) - 1, b->prefix); /* "decoder.conv1." */
        return 1;
    }
    return 0;
}

static wv_status check_view(const wv_named_view *nv, int nd, const int64_t *shape, wv_error *err)
{
    int ok = nv->view.ndim == nd;
    for (int d = 0; ok && d < nd; d++) ok = nv->view.shape[d] == shape[d];
    if (!ok) {
        char want[96], got[96];
        format_shape(want, sizeof want, nd, shape);
        format_shape(got, sizeof got, nv->view.ndim, nv->view.shape);
        return wv_fail(err, WV_ERR_INVALID, "weight '%s' has shape %s; expected %s", nv->key, got, want);
    }
    if (nv->view.on_device)
        return wv_fail(err, WV_ERR_INVALID, "weight '%s' is in device memory; weights are read on the host",
                       nv->key);
    if (!nv->view.data && wv_view_numel(&nv->view) > 0)
        return wv_fail(err, WV_ERR_INVALID, "weight '%s' has a null data pointer", nv->key);
    return WV_OK;
}

/* Which 3x3 taps each 2x2 tap of a sub-pixel phase sums, along one axis: SUBPIXEL_TAPS[phase][tap] is
 * a mask of the 3x3 kernel's rows. Output row 2R + a of the x2 frame reads x2 rows 2R + a - 1 ..
 * 2R + a + 1, which are low rows R - 1, R, R (a = 0) or R, R, R + 1 (a = 1); the 2x2 conv's tap 0 reads
 * low row R - 1 + a, its tap 1 low row R + a. */
static const int SUBPIXEL_TAPS[2][2] = {{1 << 0, 1 << 1 | 1 << 2}, {1 << 0 | 1 << 1, 1 << 2}};

void wv_subpixel_weight(const float *w3, int cout, int cin, float *w2)
{
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++)
            for (int o = 0; o < cout; o++)
                for (int i = 0; i < cin; i++) {
                    const float *k3 = w3 + ((int64_t)o * cin + i) * 9;
                    float *k2 = w2 + ((int64_t)((2 * a + b) * cout + o) * cin + i) * 4;
                    for (int ty = 0; ty < 2; ty++)
                        for (int tx = 0; tx < 2; tx++) {
                            int rows = SUBPIXEL_TAPS[a][ty], cols = SUBPIXEL_TAPS[b][tx];
                            float sum = 0.0f;
                            for (int ky = 0; ky < 3; ky++)
                                for (int kx = 0; kx < 3; kx++)
                                    if (rows >> ky & cols >> kx & 1) sum += k3[ky * 3 + kx];
                            k2[ty * 2 + tx] = sum;
                        }
                }
}

/* A parameter as the model holds it, float32 [n]: a sub-pixel conv's weight as its phases' 2x2
 * kernels, its bias once per phase; every other one as given. Returns `given` or a new array. */
static float *model_form(const float *given, const param_spec *ps, const wv_conv *cv, int64_t *n)
{
    float *out;
    int per_phase = cv->cout / WV_SUBPIXEL_PHASES;
    if (!cv->subpixel) return (float *)given;
    *n = ps->role == ROLE_WEIGHT ? (int64_t)cv->cout * cv->cin * cv->kh * cv->kw : cv->cout;
    if (!(out = (float *)malloc((size_t)*n * sizeof(float)))) return NULL;
    if (ps->role == ROLE_WEIGHT)
        wv_subpixel_weight(given, per_phase, cv->cin, out);
    else
        for (int p = 0; p < WV_SUBPIXEL_PHASES; p++)
            memcpy(out + p * per_phase, given, (size_t)per_phase * sizeof(float));
    return out;
}

/* Converts one named weight to fp32, into the model's form, repacks conv weights, and uploads it at `dst`. */
static wv_status load_param(wv_model *m, void *ctx, const wv_named_view *nv, const param_spec *ps,
                            const wv_conv *cv, void *dst, wv_error *err)
{
    const wv_backend *be = m->backend;
    int64_t n = wv_view_numel(&nv->view), n_packed, at[WV_MAX_DIMS];
    char where[96];
    float *tmp = (float *)malloc((size_t)n * sizeof(float));
    float *form = NULL, *packed = NULL;
    wv_status st = WV_OK;
    if (!tmp) return wv_fail(err, WV_ERR_NOMEM, "out of host memory converting weight '%s'", nv->key);
    if (wv_view_find_nonfinite(&nv->view, at)) {
        format_shape(where, sizeof where, nv->view.ndim, at);
        st = wv_fail(err, WV_ERR_INVALID, "weight '%s' contains NaN or Inf (first at %s): a damaged checkpoint",
                     nv->key, where);
        goto finally;
    }
    wv_view_to_f32(&nv->view, tmp);
    if (ps->role == ROLE_GAMMA) cv = NULL;
    if (cv && !(form = model_form(tmp, ps, cv, &n))) goto nomem;
    n_packed = n;
    if (ps->role == ROLE_WEIGHT) {
        n_packed = be->packed_weight_elems(cv);
        packed = (float *)calloc((size_t)n_packed, sizeof(float)); /* alignment padding stays zero */
        if (!packed) goto nomem;
        be->pack_conv_weight(form, cv, packed);
    }
    st = be->upload(ctx, dst, packed ? packed : form ? form : tmp, (size_t)n_packed, err);
    goto finally;
nomem:
    st = wv_fail(err, WV_ERR_NOMEM, "out of host memory converting weight '%s'", nv->key);
finally:
    if (form != tmp) free(form);
    free(packed);
    free(tmp);
    return st;
}

/* Where the parameter it points at lives in the weight allocation, bound to its block. */
static void *bind_param(wv_model *m, const param_iter *it, int64_t off)
{
    wv_block *b = &m->blocks[it->block];
    void *p = (char *)m->weight_mem + off * (int64_t)m->backend->param_bytes;
    switch (it->ps->role) {
    case ROLE_WEIGHT: b->conv[it->ps->slot].weight = p; break;
    case ROLE_BIAS: b->conv[it->ps->slot].bias = p; break;
    case ROLE_GAMMA: b->gamma[it->ps->slot] = p; break;
    }
    return p;
}

/* qsort order of weight views: by key, then by place in the caller's list. */
static int by_key_then_place(const void *a, const void *b)
{
    const wv_named_view *x = *(const wv_named_view *const *)a, *y = *(const wv_named_view *const *)b;
    int c = strcmp(x->key, y->key);
    return c ? c : (x > y) - (x < y);
}

/* Refuses a key given twice, naming the earliest second mention (before any weight converts: only a
 * key's first view is read). Sorted, not compared pairwise: a state dict may hold many keys. */
static wv_status refuse_duplicate_keys(const wv_named_view *w, int n_w, wv_error *err)
{
    const wv_named_view **sorted, *again = NULL;
    if (n_w < 2) return WV_OK;
    sorted = (const wv_named_view **)malloc((size_t)n_w * sizeof *sorted);
    if (!sorted) return wv_fail(err, WV_ERR_NOMEM, "out of host memory");
    for (int i = 0; i < n_w; i++) sorted[i] = &w[i];
    qsort(sorted, (size_t)n_w, sizeof *sorted, by_key_then_place);
    for (int i = 1; i < n_w; i++)
        if (!strcmp(sorted[i - 1]->key, sorted[i]->key) && (!again || sorted[i] < again)) again = sorted[i];
    free(sorted);
    return again ? wv_fail(err, WV_ERR_INVALID, "weight '%s' given twice", again->key) : WV_OK;
}

static wv_status load_all_params(wv_model *m, void *ctx, const wv_named_view *w, int n_w, char *used,
                                 param_offsets off, wv_error *err)
{
    param_iter it = PARAMS_BEGIN;
    wv_status st;
    if ((st = refuse_duplicate_keys(w, n_w, err))) return st;
    while (next_param(m, &it)) {
        int idx = -1;
        const wv_named_view *nv = find_weight(w, n_w, it.key, &idx);
        void *dst;
        if (!nv) {
            char want[96];
            format_shape(want, sizeof want, it.nd, it.shape);
            return wv_fail(err, WV_ERR_INVALID, "missing weight '%s' (expected shape %s)", it.key, want);
        }
        used[idx] = 1;
        if ((st = check_view(nv, it.nd, it.shape, err))) return st;
        dst = bind_param(m, &it, off[it.block][it.spec]);
        if ((st = load_param(m, ctx, nv, it.ps, &m->blocks[it.block].conv[it.ps->slot], dst, err))) return st;
    }
    for (int i = 0; i < n_w; i++)
        if (!used[i])
            return wv_fail(err, WV_ERR_INVALID,
                           "unexpected weight '%s' (not a Wan 2.1 decoder key for dim=%d, z_dim=%d)",
                           w[i].key, m->dim, m->z_dim);
    return WV_OK;
}

void wv_model_measure_operands(wv_model *m)
{
    for (int b = 0, c = -1; wv_next_conv(m, m->n_blocks, &b, &c);)
        m->blocks[b].conv[c].operand_per_position = m->backend->conv_operand(m->ctx, &m->blocks[b].conv[c]);
}

wv_status wv_model_build(wv_model *m, const wv_backend *be, int device, const wv_named_view *w, int n_w,
                         wv_error *err)
{
    int dim = 0, z = 0;
    param_offsets off;
    char *used = NULL;
    wv_status st;

    memset(m, 0, sizeof *m);
    m->backend = be;
    if ((st = infer_config(w, n_w, &dim, &z, err))) return st;
    build_blocks(m, dim, z);
    m->weight_bytes = (size_t)layout_params(m, off) * be->param_bytes;
    assign_cache_slots(m);

    used = (char *)calloc((size_t)(n_w > 0 ? n_w : 1), 1);
    if (!used) return wv_fail(err, WV_ERR_NOMEM, "out of host memory");
    if ((st = be->ctx_create(be, device, &m->ctx, err))) goto finally;
    wv_model_measure_operands(m);
    st = be->alloc(m->ctx, m->weight_bytes, &m->weight_mem, err);
    if ((st = wv_fail_in(err, st, "the model's weights"))) goto finally;
    be->zero(m->ctx, m->weight_mem, m->weight_bytes);
    if ((st = load_all_params(m, m->ctx, w, n_w, used, off, err))) goto finally;
    st = be->sync(m->ctx, err);
finally:
    free(used);
    if (st) wv_model_free(m);
    return st;
}

void wv_model_free(wv_model *m)
{
    const wv_backend *be = m->backend;
    if (!be) return;
    if (m->weight_mem) be->release(m->ctx, m->weight_mem);
    if (m->ctx) be->ctx_destroy(m->ctx);
    m->weight_mem = NULL;
    m->ctx = NULL;
}
