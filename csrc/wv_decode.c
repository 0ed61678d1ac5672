/* The driver: trunk (full frame, streamed over time) -> tiles -> time chunks.
 * It walks the model's block list and calls one runner per block kind; it knows no backend. */
#include "wv_internal.h"

#include <string.h>
#include <time.h>
#ifdef _WIN32
#include <windows.h>
#endif

typedef struct {
    const wv_model *m;
    const wv_plan *p;
    const wv_backend *be;
    void *ctx;
    char *arena;
    size_t high_water;
    char *trunk_host; /* the trunk output of all frames in host memory (plan's trunk_host_bytes), or NULL */
    const wv_view *lat;
    const float *mean, *std;
    const wv_options *o;
    char *out;          /* [frames_out][H][W][3] items of the output type */
    int out_frame;      /* the next output frame a tile's last segment writes */
    wv_stats *stats;
    wv_error profile_err; /* the first failure a profiling sync saw, reported at the step's end */
    int oldest[WV_MAX_BLOCKS * WV_BLOCK_MAX_CONVS];          /* each causal cache's wv_ring.oldest */
    unsigned char tap0_ran[WV_MAX_BLOCKS * WV_BLOCK_MAX_CONVS]; /* taps apart: tap 0 of its next frame ran */
} decode_run;

/* Activations in flight through the block list. The result of each block is left in x. */
typedef struct {
    wv_grid g;       /* one frame at a time: the ops' frame counts are 1 */
    void *x, *y, *t; /* activations, second activations, conv input */
    int first_chunk; /* latent frame 0 of the sequence: upsample3d passes it through */
    int tile, seg;
} flow;

typedef void (*block_runner)(decode_run *r, const wv_block *b, flow *f);

/* Wall-clock seconds. C11's timespec_get is missing from MinGW's C runtime, hence the Windows branch. */
static double now_seconds(void)
{
#ifdef _WIN32
    LARGE_INTEGER count, freq;
    QueryPerformanceCounter(&count);
    QueryPerformanceFrequency(&freq);
    return (double)count.QuadPart / (double)freq.QuadPart;
#else
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#endif
}

/* With o->profile: waits for the op just queued and adds its time, and the host's part of it. */
static void op_timed(decode_run *r, int op, double start)
{
    wv_error e;
    r->stats->op_host_seconds[op] += now_seconds() - start;
    if (r->be->sync(r->ctx, &e) && !r->profile_err.code) r->profile_err = e;
    r->stats->op_seconds[op] += now_seconds() - start;
    r->stats->op_calls[op]++;
}

/* Every compute op of the decode goes through here. A failure a profiling sync saw stops the
 * step's remaining ops, as a backend's own recorded error does. */
#define OP(r, name, ...)                                              \
    do {                                                              \
        if (!(r)->profile_err.code) {                                 \
            double start_ = (r)->o->profile ? now_seconds() : 0.0;    \
            (r)->be->name((r)->ctx, __VA_ARGS__);                     \
            if ((r)->o->profile) op_timed((r), WV_OP_##name, start_); \
        }                                                             \
    } while (0)

static void *arena_buffer(decode_run *r, int id)
{
    const wv_buffer_plan *b = &r->p->buffers[id];
    if (b->offset + b->bytes > r->high_water) r->high_water = b->offset + b->bytes;
    return r->arena + b->offset;
}

static void *frame_at(void *base, int64_t index, int64_t frame_elems, size_t act_bytes)
{
    return (char *)base + (size_t)(index * frame_elems) * act_bytes;
}

static void swap_xy(flow *f)
{
    void *tmp = f->x;
    f->x = f->y;
    f->y = tmp;
}

/* One conv op over temporal taps [first, last], with its part of the conv's profile. */
static void conv_taps(decode_run *r, const wv_conv *cv, wv_grid g, const void *const *frames, int first, int last,
                      void *y, int accumulate)
{
    double before = r->stats->op_seconds[WV_OP_conv]; /* the conv's own time is what OP adds there */
    OP(r, conv, cv, g, frames, first, last, y, accumulate);
    if (r->o->profile && !r->profile_err.code) {
        int64_t macs_per_position = (int64_t)cv->cout * cv->cin * (last - first + 1) * cv->kh * cv->kw;
        r->stats->conv_seconds[cv->id] += r->stats->op_seconds[WV_OP_conv] - before;
        r->stats->conv_calls[cv->id]++;
        r->stats->conv_flops[cv->id] += 2 * wv_grid_positions(wv_conv_out_grid(cv, g)) * macs_per_position;
    }
}

static wv_ring cache_ring(decode_run *r, const wv_conv *cv, wv_grid g)
{
    wv_ring q;
    q.base = (char *)arena_buffer(r, WV_BUF_CACHE0 + cv->cache_slot);
    q.frame_bytes = (size_t)(wv_grid_positions(g) * cv->cin) * r->be->act_bytes;
    q.slots = wv_cache_frames(r->be, cv);
    q.oldest = r->oldest[cv->cache_slot];
    return q;
}

/* Where causal conv cv's next input frame goes for the conv to read it in place: its slot in ring q.
 * With the taps apart that is tap 0's slot, so tap 0 runs into y first. */
static void *ring_input(decode_run *r, const wv_conv *cv, const wv_ring *q, wv_grid g, void *y, int accumulate)
{
    if (q->slots < cv->kt && !r->tap0_ran[cv->cache_slot]) {
        const void *frames[WV_MAX_TAPS] = {wv_ring_slot(q, 0)};
        conv_taps(r, cv, g, frames, 0, 0, y, accumulate);
        r->tap0_ran[cv->cache_slot] = 1;
    }
    return wv_ring_slot(q, cv->kt - 1);
}

/* Where the producer of causal conv cv's input frame writes it, for a conv into y: in place in the
 * cache, or `fallback` when cv has none, or one the backend keeps, or when its taps are apart and y
 * is still an input of the producer (tap 0 would run into it first). */
static void *input_for(decode_run *r, const wv_conv *cv, wv_grid g, void *y, int accumulate, int y_busy,
                       void *fallback)
{
    wv_ring q;
    if (cv->cache_slot < 0 || r->be->cache_layout(cv) == WV_CACHE_KEPT) return fallback;
    q = cache_ring(r, cv, g);
    if (y_busy && q.slots < cv->kt) return fallback;
    return ring_input(r, cv, &q, g, y, accumulate);
}

/* y (+)= cv(x). A causal conv reads its cache and x (written where input_for said, or anywhere:
 * then copied into its slot, unless the backend keeps the cache), and its ring advances. */
static void causal_conv(decode_run *r, const wv_conv *cv, wv_grid g, const void *x, void *y, int accumulate)
{
    const void *frames[WV_MAX_TAPS] = {x};
    wv_ring q;
    if (cv->cache_slot < 0) {
        conv_taps(r, cv, g, frames, 0, 0, y, accumulate);
        return;
    }
    q = cache_ring(r, cv, g);
    if (r->be->cache_layout(cv) == WV_CACHE_KEPT) {
        for (int dt = 0; dt < cv->kt - 1; dt++) frames[dt] = wv_ring_slot(&q, dt);
        frames[cv->kt - 1] = x;
        conv_taps(r, cv, g, frames, 0, cv->kt - 1, y, accumulate);
    } else {
        wv_grid whole = {g.h + 2 * g.pad, g.w + 2 * g.pad, 0};
        int apart = q.slots < cv->kt;
        void *slot = ring_input(r, cv, &q, g, y, accumulate);
        if (x != slot) OP(r, copy_region, x, whole, 0, 0, slot, whole, cv->cin, 1);
        for (int dt = 0; dt < cv->kt; dt++) frames[dt] = wv_ring_slot(&q, dt);
        conv_taps(r, cv, g, frames, apart, cv->kt - 1, y, apart || accumulate);
        r->tap0_ran[cv->cache_slot] = 0;
    }
    r->oldest[cv->cache_slot] = (q.oldest + 1) % q.slots;
}

/* [P][z] -> [P][z]; the output feeds a 3x3 conv, so its ring is cleared. */
static void run_pointwise(decode_run *r, const wv_block *b, flow *f)
{
    causal_conv(r, &b->conv[WV_CONV], f->g, f->x, f->y, 0);
    OP(r, zero_ring, f->y, f->g, b->cout, 1);
    swap_xy(f);
}

/* [P][cin] -> [P][cout] */
static void run_conv(decode_run *r, const wv_block *b, flow *f)
{
    causal_conv(r, &b->conv[WV_CONV], f->g, f->x, f->y, 0);
    swap_xy(f);
}

/* [P][cin] -> [P][cout]: conv6(silu(rms3(conv2(silu(rms0(x)))))) + shortcut(x). Each
 * normalized frame goes where its conv reads it; the second one, when a shortcut's sum waits in y,
 * the conv's output, which it is normalized from, goes through t if the conv's taps are apart. */
static void run_residual(decode_run *r, const wv_block *b, flow *f)
{
    const wv_conv *conv1 = &b->conv[WV_RES_CONV1], *conv2 = &b->conv[WV_RES_CONV2];
    int shortcut = b->has_conv[WV_RES_SHORTCUT];
    void *t0 = input_for(r, conv1, f->g, f->y, 0, 0, f->t), *t1;
    OP(r, rms_norm, f->x, f->g, t0, f->g, b->cin, 1, b->gamma[WV_RES_NORM1], 1);
    causal_conv(r, conv1, f->g, t0, f->y, 0);
    t1 = input_for(r, conv2, f->g, shortcut ? f->y : f->x, 1, shortcut, f->t);
    OP(r, rms_norm, f->y, f->g, t1, f->g, b->cout, 1, b->gamma[WV_RES_NORM2], 1);
    if (shortcut) {
        causal_conv(r, &b->conv[WV_RES_SHORTCUT], f->g, f->x, f->y, 0);
        causal_conv(r, conv2, f->g, t1, f->y, 1);
        swap_xy(f);
    } else {
        causal_conv(r, conv2, f->g, t1, f->x, 1);
    }
}

/* [1][P][C] -> [1][P][C]: x + proj(softmax(q k^T / sqrt(C)) v), q k v = to_qkv(rms(x)), on the
 * unpadded frame [h*w][C] (the sum in the norm's buffer, free once qkv is made) */
static void run_attention(decode_run *r, const wv_block *b, flow *f)
{
    wv_grid flat = {f->g.h, f->g.w, 0};
    int N = f->g.h * f->g.w, C = b->cin;
    void *normed = arena_buffer(r, WV_BUF_ATTN_IN), *qkv = arena_buffer(r, WV_BUF_ATTN_QKV);
    void *heads = arena_buffer(r, WV_BUF_ATTN_OUT), *scores = arena_buffer(r, WV_BUF_ATTN_SCORES);
    OP(r, rms_norm, f->x, f->g, normed, flat, C, 1, b->gamma[WV_ATTN_NORM], 0);
    causal_conv(r, &b->conv[WV_ATTN_QKV], flat, normed, qkv, 0);
    OP(r, attention, qkv, heads, N, C, scores, r->p->attn_rows);
    OP(r, copy_region, f->x, f->g, 0, 0, normed, flat, C, 1);
    causal_conv(r, &b->conv[WV_ATTN_PROJ], flat, heads, normed, 1);
    OP(r, copy_region, normed, flat, 0, 0, f->x, f->g, C, 1);
}

/* [P][C] -> [P][WV_RGB] */
static void run_head(decode_run *r, const wv_block *b, flow *f)
{
    void *t = input_for(r, &b->conv[WV_CONV], f->g, f->y, 0, 0, f->t);
    OP(r, rms_norm, f->x, f->g, t, f->g, b->cin, 1, b->gamma[WV_HEAD_NORM], 1);
    causal_conv(r, &b->conv[WV_CONV], f->g, t, f->y, 0);
    swap_xy(f);
}

/* Blocks that keep the frame count and resolution. Upsampling blocks end a tile segment and are
 * run by upsample_depth_first. */
static const block_runner RUNNERS[WV_BLOCK_KIND_COUNT] = {
    [WV_BLOCK_POINTWISE] = run_pointwise, [WV_BLOCK_CONV] = run_conv, [WV_BLOCK_RES] = run_residual,
    [WV_BLOCK_ATTN] = run_attention,      [WV_BLOCK_HEAD] = run_head,
};

/* Channels of the trunk's output. */
static int trunk_channels(const decode_run *r) { return r->m->blocks[r->p->trunk_end - 1].cout; }

static void *trunk_out_frame(decode_run *r, int slot)
{
    int64_t elems = (int64_t)r->p->h * r->p->w * trunk_channels(r);
    return frame_at(r->trunk_host ? r->trunk_host : arena_buffer(r, WV_BUF_TRUNK_OUT), slot, elems, r->be->act_bytes);
}

/* Latent frame t through the trunk's blocks (conv2, conv1, middle.0, the attention, and where the
 * plan says so, middle.2 and the first stage up to its upsample), into trunk output `slot` [h*w][C]. */
static void trunk_frame(decode_run *r, int t, int slot)
{
    wv_grid full = {r->p->h, r->p->w, 0};
    flow f;
    memset(&f, 0, sizeof f);
    f.g.h = r->p->h;
    f.g.w = r->p->w;
    f.g.pad = 1;
    f.x = arena_buffer(r, WV_BUF_TRUNK_X);
    f.y = arena_buffer(r, WV_BUF_TRUNK_Y);
    f.t = arena_buffer(r, WV_BUF_TRUNK_T);
    OP(r, load_latent, r->lat, t, r->mean, r->std, f.g, f.x);
    for (int b = 0; b < r->p->trunk_end; b++) RUNNERS[r->m->blocks[b].kind](r, &r->m->blocks[b], &f);
    OP(r, copy_region, f.x, f.g, 0, 0, trunk_out_frame(r, slot), full, trunk_channels(r), 1);
}

/* Output frame of chunk t (latent frame t of its sequence) within the sequence. */
static int chunk_first_output_frame(const wv_plan *p, int t)
{
    return t == 0 ? 0 : 1 + p->seg[p->n_segments - 1].frames_per_chunk * (t - 1);
}

/* Segment s's three one-frame buffers, laid out by the planner. */
static void segment_buffers(decode_run *r, int s, flow *f)
{
    const wv_segment *sg = &r->p->seg[s];
    char *base = (char *)arena_buffer(r, WV_BUF_TILE_SCRATCH) + sg->scratch_offset;
    size_t xy = wv_align_up((size_t)sg->xy_elems * r->be->act_bytes);
    f->x = base;
    f->y = base + xy;
    f->t = base + 2 * xy;
}

static void run_segment(decode_run *r, flow *f);

/* The upsample that ends segment f->seg: [1][P][C] -> one or two frames [1][P'][C/2] of the next
 * segment's region. For upsample3d after the first chunk the time conv makes two frames (its output
 * channels [0,C) and [C,2C) are frames 2t and 2t+1), each taken into x in turn. The sub-pixel conv
 * reads x with a zero ring, the frame's zero padding where x's region ends at the frame's edge (the
 * next segment's region needs no pixel beyond x's interior elsewhere), and writes its phases into
 * the next segment's t. Each frame is carried through the rest of the decoder before the next one
 * (depth first), so every segment holds one frame at a time; frames still reach every causal conv
 * in order, which is all streaming needs to stay exact. */
static void upsample_depth_first(decode_run *r, const wv_block *b, flow *f)
{
    const wv_plan *p = r->p;
    const wv_conv *cv = &b->conv[WV_UP_RESAMPLE];
    int next = f->seg + 1, per = 1;
    const wv_rect *src = &p->tiles[f->tile].region[f->seg], *dst = &p->tiles[f->tile].region[next];
    if (b->kind == WV_BLOCK_UP3D && !f->first_chunk) {
        causal_conv(r, &b->conv[WV_UP_TIME_CONV], f->g, f->x, f->y, 0);
        per = 2;
    }
    for (int j = 0; j < per; j++) {
        flow child = *f;
        child.seg = next;
        child.g = wv_tile_grid(p, f->tile, next);
        segment_buffers(r, next, &child);
        if (per == 2) OP(r, copy_channels, f->y, 2 * b->cin, j * b->cin, f->x, b->cin, wv_grid_positions(f->g));
        OP(r, zero_ring, f->x, f->g, b->cin, 1);
        causal_conv(r, cv, f->g, f->x, child.t, 0);
        OP(r, pixel_shuffle, child.t, wv_conv_out_grid(cv, f->g), src->y.lo, src->x.lo, child.x, child.g, dst->y.lo,
           dst->x.lo, b->cout);
        run_segment(r, &child);
    }
}

/* The head's RGB frame [1][P][WV_RGB] -> its core in the output video, at the next output frame. */
static void write_core(decode_run *r, const flow *f)
{
    const wv_plan *p = r->p;
    const wv_tile *tl = &p->tiles[f->tile];
    const wv_rect *last = &tl->region[f->seg];
    size_t frame_bytes = (size_t)p->H * (size_t)p->W * WV_RGB * wv_output_item_bytes(p->output);
    void *dst = r->out + (size_t)r->out_frame++ * frame_bytes;
    OP(r, write_output, f->x, f->g, tl->core.y.lo - last->y.lo, tl->core.x.lo - last->x.lo,
       tl->core.y.hi - tl->core.y.lo, tl->core.x.hi - tl->core.x.lo, dst, p->W, tl->core.y.lo, tl->core.x.lo,
       p->output);
}

/* The blocks of segment f->seg on one frame (its opening upsample already ran), then on to the next
 * segment or into the output. */
static void run_segment(decode_run *r, flow *f)
{
    const wv_model *m = r->m;
    const wv_segment *sg = &r->p->seg[f->seg];
    for (int b = f->seg ? sg->first_block + 1 : sg->first_block; b < sg->end_block; b++)
        RUNNERS[m->blocks[b].kind](r, &m->blocks[b], f);
    if (sg->end_block < m->n_blocks)
        upsample_depth_first(r, &m->blocks[sg->end_block], f);
    else
        write_core(r, f);
}

/* One time chunk of one tile: trunk output region -> the tile part (middle.2 or the first upsample on,
 * as the plan cut it) -> the tile's core. */
static void tile_chunk(decode_run *r, int tile, int t, int slot, int out_frame)
{
    const wv_plan *p = r->p;
    wv_grid full = {p->h, p->w, 0};
    flow f;
    memset(&f, 0, sizeof f);
    f.g = wv_tile_grid(p, tile, 0);
    f.first_chunk = t == 0;
    f.tile = tile;
    segment_buffers(r, 0, &f);
    r->out_frame = out_frame;
    OP(r, copy_region, trunk_out_frame(r, slot), full, p->tiles[tile].region[0].y.lo, p->tiles[tile].region[0].x.lo,
       f.x, f.g, trunk_channels(r), 1);
    run_segment(r, &f);
}

static void zero_caches(decode_run *r, int trunk)
{
    const wv_model *m = r->m;
    int end = trunk ? r->p->trunk_end : m->n_blocks;
    for (int b = trunk ? 0 : r->p->trunk_end, c = -1; wv_next_conv(m, end, &b, &c);) {
        const wv_conv *cv = &m->blocks[b].conv[c];
        if (cv->cache_slot < 0) continue;
        OP(r, zero, arena_buffer(r, WV_BUF_CACHE0 + cv->cache_slot),
           r->p->buffers[WV_BUF_CACHE0 + cv->cache_slot].bytes);
        r->oldest[cv->cache_slot] = 0;
        r->tap0_ran[cv->cache_slot] = 0;
    }
}

typedef struct {
    wv_progress_fn fn;
    void *user;
    int64_t done, total;
} progress_state;

/* Reports the step, then ends it on the backend (surfacing its errors). The callback runs with the
 * thread as the caller had it (release_thread), and end_step takes it back, whatever the callback
 * switched; the step is queued by then, so it is done as far as a progress bar can tell. */
static wv_status step_done(decode_run *r, progress_state *ps, wv_error *err)
{
    int stop = 0;
    if (ps->fn) {
        if (r->be->release_thread) r->be->release_thread(r->ctx);
        stop = ps->fn(ps->user, ps->done + 1, ps->total);
    }
    wv_status st = r->be->end_step(r->ctx, err);
    if (!st && r->profile_err.code) {
        *err = r->profile_err;
        st = err->code;
    }
    if (st) return st;
    ps->done++;
    if (stop)
        return wv_fail(err, WV_ERR_INTERRUPTED, "decode interrupted after %lld of %lld steps",
                       (long long)ps->done, (long long)ps->total);
    return WV_OK;
}

static wv_status decode_sequence(decode_run *r, int q, progress_state *ps, wv_stats *stats, wv_error *err)
{
    const wv_plan *p = r->p;
    int t0 = p->seq_start[q], T = p->seq_len[q];
    wv_status st = WV_OK;
    double start;
    /* The trunk's buffers and caches share memory with the tiles' (the output staging among them),
     * which the backend may still be copying the previous sequence's last output out of. */
    if (!p->stream_trunk && q > 0 && (st = r->be->sync(r->ctx, err))) return st;
    zero_caches(r, 1);
    if (p->stream_trunk) {
        zero_caches(r, 0);
        for (int t = 0; t < T && !st; t++) {
            start = now_seconds();
            trunk_frame(r, t0 + t, 0);
            if ((st = step_done(r, ps, err))) break;
            stats->seconds_trunk += now_seconds() - start;
            start = now_seconds();
            tile_chunk(r, 0, t, 0, p->seq_out[q] + chunk_first_output_frame(p, t));
            st = step_done(r, ps, err);
            stats->seconds_tiles += now_seconds() - start;
        }
        return st;
    }
    start = now_seconds();
    for (int t = 0; t < T && !st; t++) {
        trunk_frame(r, t0 + t, t);
        st = step_done(r, ps, err);
    }
    stats->seconds_trunk += now_seconds() - start;
    start = now_seconds();
    for (int tile = 0; tile < p->n_tiles && !st; tile++) {
        zero_caches(r, 0);
        for (int t = 0; t < T && !st; t++) {
            tile_chunk(r, tile, t, t, p->seq_out[q] + chunk_first_output_frame(p, t));
            st = step_done(r, ps, err);
        }
    }
    stats->seconds_tiles += now_seconds() - start;
    return st;
}

static wv_status check_against_plan(const wv_model *m, const wv_plan *p, const wv_view *lat, const wv_options *o,
                                   wv_error *err)
{
    if (lat->ndim != 4 || lat->shape[0] != m->z_dim || lat->shape[1] != p->T || lat->shape[2] != p->h ||
        lat->shape[3] != p->w)
        return wv_fail(err, WV_ERR_INVALID, "latents do not match the plan: expected [%d, %d, %d, %d]",
                       m->z_dim, p->T, p->h, p->w);
    if (!lat->data) return wv_fail(err, WV_ERR_INVALID, "latents have a null data pointer");
    if (o->output != p->output) /* its output staging is sized for the plan's output type */
        return wv_fail(err, WV_ERR_INVALID, "the plan was made for output type %d, the decode asks for %d",
                       (int)p->output, (int)o->output);
    for (int d = 0; d < 4; d++)
        if (lat->strides[d] < 0)
            return wv_fail(err, WV_ERR_INVALID, "latents have a negative stride on axis %d", d);
    return WV_OK;
}

wv_status wv_decode(const wv_model *m, const wv_plan *p, const wv_view *latents, uintptr_t stream,
                    const float *mean, const float *std, const wv_options *o, void *out, wv_progress_fn progress,
                    void *progress_user, wv_stats *stats, wv_error *err)
{
    decode_run r;
    progress_state ps;
    wv_call call;
    wv_status st;
    int begun = 0;
    double start = now_seconds();

    memset(&r, 0, sizeof r);
    memset(stats, 0, sizeof *stats);
    if ((st = check_against_plan(m, p, latents, o, err))) return st;
    r.m = m;
    r.p = p;
    r.be = m->backend;
    r.ctx = m->ctx;
    r.mean = mean;
    r.std = std;
    r.o = o;
    r.out = out;
    r.stats = stats;
    ps.fn = progress;
    ps.user = progress_user;
    ps.done = 0;
    ps.total = 0;
    for (int q = 0; q < p->n_seq; q++) ps.total += (int64_t)p->seq_len[q] * (1 + p->n_tiles);

    st = r.be->alloc(r.ctx, p->arena_bytes, (void **)&r.arena, err);
    if ((st = wv_fail_in(err, st, "the decode's working memory"))) goto finally;
    st = p->trunk_host_bytes ? r.be->alloc_host(r.ctx, p->trunk_host_bytes, (void **)&r.trunk_host, err) : WV_OK;
    if ((st = wv_fail_in(err, st, "the first blocks' whole-frame output, kept on the host"))) goto finally;
    call.latents = latents;
    call.stream = stream;
    call.workspace = arena_buffer(&r, WV_BUF_WORKSPACE);
    call.workspace_bytes = p->buffers[WV_BUF_WORKSPACE].bytes;
    call.step_out_bytes = p->step_out_bytes;
    call.output_staging = arena_buffer(&r, WV_BUF_OUTPUT_STAGING);
    call.weight_scratch = p->buffers[WV_BUF_WEIGHT_SCRATCH].bytes ? arena_buffer(&r, WV_BUF_WEIGHT_SCRATCH) : NULL;
    call.weight_scratch_bytes = p->buffers[WV_BUF_WEIGHT_SCRATCH].bytes;
    begun = 1;
    if ((st = r.be->begin(r.ctx, &call, err))) goto finally;
    r.lat = call.latents;
    r.be->zero(r.ctx, r.arena, p->arena_bytes);
    for (int q = 0; q < p->n_seq && !st; q++) st = decode_sequence(&r, q, &ps, stats, err);
    if (!st) st = r.be->sync(r.ctx, err);
finally:
    if (begun) r.be->finish(r.ctx);
    if (r.trunk_host) r.be->release_host(r.ctx, r.trunk_host);
    if (r.arena) r.be->release(r.ctx, r.arena);
    stats->arena_high_water = r.high_water;
    stats->steps = ps.done;
    stats->seconds_total = now_seconds() - start;
    return st;
}
