/* The planner: halos from the layer list, segments, the tile grid, and every buffer's bytes. */
#include "wv_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The plan's byte counts are size_t: on a 32-bit platform they could wrap where an int64 would not. */
_Static_assert(sizeof(size_t) >= 8, "wanvideo_vae needs a 64-bit platform");

#define WV_MAX_TILES (1 << 20) /* a 4K frame in the smallest tiles is some 130000 */

static int ceil_div(int a, int b) { return (a + b - 1) / b; }
static int imax(int a, int b) { return a > b ? a : b; }
static int imin(int a, int b) { return a < b ? a : b; }

static int block_upsamples(const wv_block *b)
{
    return b->kind == WV_BLOCK_UP2D || b->kind == WV_BLOCK_UP3D;
}

/* Pixels of context the block's spatial convolutions read around each output pixel (a sub-pixel
 * conv's: those of its 3x3 conv at the output resolution). */
static int block_conv_radius(const wv_block *b)
{
    int r = 0;
    for (int c = 0; c < WV_BLOCK_MAX_CONVS; c++)
        if (b->has_conv[c]) r += b->conv[c].subpixel ? 1 : (b->conv[c].kh - 1) / 2;
    return r;
}

/* Halo needed at the block's input for `h` pixels of halo at its output. In an upsampling block
 * the spatial conv is the one after the nearest x2, at the output resolution. */
static int block_halo_in(const wv_block *b, int h)
{
    h += block_conv_radius(b);
    return block_upsamples(b) ? ceil_div(h, 2) : h;
}

/* halo[b] = halo at the input of block b, halo[n_blocks] = 0 at the output. */
static void halos_walk(const wv_model *m, int *halo)
{
    halo[m->n_blocks] = 0;
    for (int b = m->n_blocks - 1; b >= 0; b--)
        halo[b] = b >= m->trunk_end ? block_halo_in(&m->blocks[b], halo[b + 1]) : -1;
}

void wv_model_halos(const wv_model *m, int *halo_out)
{
    int halo[WV_MAX_BLOCKS + 1];
    halos_walk(m, halo);
    memcpy(halo_out, halo, sizeof(int) * (size_t)m->n_blocks);
}

int wv_block_segment(const wv_plan *p, const wv_model *m, int block)
{
    int seg = 0;
    if (block < p->trunk_end) return -1;
    for (int b = p->trunk_end; b <= block; b++) seg += block_upsamples(&m->blocks[b]);
    return seg;
}

wv_grid wv_tile_grid(const wv_plan *p, int t, int s)
{
    const wv_rect *r = &p->tiles[t].region[s];
    wv_grid g = {r->y.hi - r->y.lo, r->x.hi - r->x.lo, 1};
    return g;
}

/* Segment after the last one (or the first, at block b): where block b's frames are computed. */
static wv_status open_segment(wv_plan *p, const wv_model *m, const int *halo, int b, wv_error *err)
{
    wv_segment *s = &p->seg[p->n_segments];
    const wv_segment *prev = p->n_segments ? s - 1 : NULL;
    if (p->n_segments == WV_MAX_SEGMENTS)
        return wv_fail(err, WV_ERR_INVALID, WV_INTERNAL "too many upsampling stages");
    s->first_block = b;
    s->scale = prev ? prev->scale * 2 : 1;
    s->frames_per_chunk = !prev                                  ? 1
                          : m->blocks[b].kind == WV_BLOCK_UP3D ? prev->frames_per_chunk * 2
                                                                 : prev->frames_per_chunk;
    /* a segment's region is fixed after the upsample's own conv, where its frames double */
    s->halo = prev ? halo[b + 1] : halo[b];
    if (prev) p->seg[p->n_segments - 1].end_block = b;
    p->n_segments++;
    return WV_OK;
}

/* Segment 0 starts where the trunk ends; every upsample ends one and starts the next. A trunk that
 * ends at an upsample leaves segment 0 empty: a tile starts with the upsample. */
static wv_status make_segments(wv_plan *p, const wv_model *m, wv_error *err)
{
    int halo[WV_MAX_BLOCKS + 1];
    wv_status st;
    halos_walk(m, halo);
    p->n_segments = 0;
    for (int b = p->trunk_end; b < m->n_blocks; b++) {
        if (b == p->trunk_end && (st = open_segment(p, m, halo, b, err))) return st;
        if (block_upsamples(&m->blocks[b]) && (st = open_segment(p, m, halo, b, err))) return st;
    }
    p->seg[p->n_segments - 1].end_block = m->n_blocks;
    p->out_scale = p->seg[p->n_segments - 1].scale;
    p->out_halo = p->seg[p->n_segments - 1].halo;
    return WV_OK;
}

/* Core size along one axis, in output pixels, for a tile size (core + 2 * output halo). */
static wv_status core_size(const wv_plan *p, int tile, int frame, const char *axis, int *core,
                           wv_error *err)
{
    int min_tile = 2 * p->out_halo + p->out_scale;
    if (tile <= 0) {
        *core = frame;
        return WV_OK;
    }
    if (tile < min_tile)
        return wv_fail(err, WV_ERR_INVALID,
                       "tile_%s=%d is smaller than the halo allows: a tile needs at least %d output "
                       "pixels (%d core + 2 x %d halo)",
                       axis, tile, min_tile, p->out_scale, p->out_halo);
    *core = imin(frame, (tile - 2 * p->out_halo) / p->out_scale * p->out_scale);
    return WV_OK;
}

static wv_span scaled_region(wv_span core_out, int out_scale, int scale, int halo, int frame)
{
    wv_span r;
    int f = out_scale / scale;
    r.lo = imax(0, core_out.lo / f - halo);
    r.hi = imin(frame, core_out.hi / f + halo);
    return r;
}

static wv_status make_tiles(wv_plan *p, const wv_options *o, wv_error *err)
{
    wv_status st;
    if ((st = core_size(p, o->tile_x, p->W, "x", &p->core_x, err))) return st;
    if ((st = core_size(p, o->tile_y, p->H, "y", &p->core_y, err))) return st;
    p->tiles_x = ceil_div(p->W, p->core_x);
    p->tiles_y = ceil_div(p->H, p->core_y);
    if ((int64_t)p->tiles_x * p->tiles_y > WV_MAX_TILES)
        return wv_fail(err, WV_ERR_INVALID, "%d x %d tiles is too many (at most %d); use larger tiles", p->tiles_x,
                       p->tiles_y, WV_MAX_TILES);
    p->n_tiles = p->tiles_x * p->tiles_y;
    p->tiles = (wv_tile *)calloc((size_t)p->n_tiles, sizeof(wv_tile));
    if (!p->tiles) return wv_fail(err, WV_ERR_NOMEM, "out of host memory for %d tiles", p->n_tiles);
    for (int ty = 0; ty < p->tiles_y; ty++)
        for (int tx = 0; tx < p->tiles_x; tx++) {
            wv_tile *t = &p->tiles[ty * p->tiles_x + tx];
            t->core.y.lo = ty * p->core_y;
            t->core.y.hi = imin(p->H, t->core.y.lo + p->core_y);
            t->core.x.lo = tx * p->core_x;
            t->core.x.hi = imin(p->W, t->core.x.lo + p->core_x);
            for (int s = 0; s < p->n_segments; s++) {
                const wv_segment *sg = &p->seg[s];
                t->region[s].y = scaled_region(t->core.y, p->out_scale, sg->scale, sg->halo, p->h * sg->scale);
                t->region[s].x = scaled_region(t->core.x, p->out_scale, sg->scale, sg->halo, p->w * sg->scale);
            }
        }
    return WV_OK;
}

/* The grid buffers of segment s are sized for: a full core with its halo on both sides, clipped
 * only by the frame. Sizing by the tile rather than by the tiles this frame happens to have keeps
 * the plan a function of the tile size alone (every tile's region fits in it). */
static wv_grid max_tile_grid(const wv_plan *p, int s)
{
    const wv_segment *sg = &p->seg[s];
    int f = p->out_scale / sg->scale;
    wv_grid g = {imin(p->h * sg->scale, p->core_y / f + 2 * sg->halo), imin(p->w * sg->scale, p->core_x / f + 2 * sg->halo),
                 1};
    return g;
}

/* Every tile's region in every segment within the grid its buffers are sized for: a region beyond
 * it would run past the scratch and the caches, so a planner bug fails here, not in a kernel. */
static wv_status check_regions_fit(const wv_plan *p, wv_error *err)
{
    for (int t = 0; t < p->n_tiles; t++)
        for (int s = 0; s < p->n_segments; s++) {
            wv_grid g = wv_tile_grid(p, t, s), room = max_tile_grid(p, s);
            if (g.h > room.h || g.w > room.w)
                return wv_fail(err, WV_ERR_INVALID,
                               WV_INTERNAL "tile %d's region in segment %d is %dx%d, beyond the %dx%d its buffers hold",
                               t, s, g.h, g.w, room.h, room.w);
        }
    return WV_OK;
}

/* Elements segment s's one-frame buffers need (see the driver). x and y swap roles, so both take
 * any block's input or output and the time conv output (2 C) of the upsample ending the segment;
 * t takes a block's normalized input or output, and the phases of the sub-pixel conv that opens
 * the segment (computed on the previous segment's grid). */
static void segment_scratch(const wv_plan *p, const wv_model *m, int s, int64_t *xy, int64_t *t)
{
    const wv_segment *sg = &p->seg[s];
    int64_t P = wv_grid_positions(max_tile_grid(p, s));
    *xy = sg->end_block < m->n_blocks ? P * m->blocks[sg->end_block].cin : 0; /* the upsample's input */
    *t = 0;
    for (int b = sg->first_block; b < sg->end_block; b++) {
        const wv_block *blk = &m->blocks[b];
        int opens = b == sg->first_block && s > 0; /* the upsample producing this segment's frames */
        const wv_conv *cv = &blk->conv[WV_UP_RESAMPLE]; /* read where it opens the segment */
        int64_t io = P * (opens ? blk->cout : imax(blk->cin, blk->cout));
        int64_t conv_in = opens ? wv_grid_positions(wv_conv_out_grid(cv, max_tile_grid(p, s - 1))) * cv->cout
                                : P * imax(blk->cin, blk->cout);
        *xy = *xy > io ? *xy : io;
        *t = *t > conv_in ? *t : conv_in;
    }
    if (sg->end_block < m->n_blocks && m->blocks[sg->end_block].kind == WV_BLOCK_UP3D) {
        int64_t e = P * 2 * m->blocks[sg->end_block].cin;
        *xy = *xy > e ? *xy : e;
    }
}

/* Positions of the grid block b's convs read: the trunk's full frame, or its tile segment. */
static int64_t conv_positions(const wv_plan *p, const wv_model *m, int b)
{
    wv_grid full = {p->h, p->w, 1};
    int s = wv_block_segment(p, m, b);
    if (s < 0) return wv_grid_positions(full);
    if (block_upsamples(&m->blocks[b])) s--; /* time_conv and the sub-pixel conv: before the x2 */
    return wv_grid_positions(max_tile_grid(p, s));
}

static void size_conv_operands(wv_plan *p, const wv_model *m)
{
    p->trunk_operand = p->tile_operand = 0;
    for (int b = 0, c = -1; wv_next_conv(m, m->n_blocks, &b, &c);) {
        int64_t *largest = b < p->trunk_end ? &p->trunk_operand : &p->tile_operand;
        int64_t e = m->blocks[b].conv[c].operand_per_position * conv_positions(p, m, b);
        *largest = e > *largest ? e : *largest;
    }
}

/* Whether a plan's convolutions stay within what the backend's libraries take (max_conv_elems). */
static int operands_fit(const wv_plan *p, const wv_model *m)
{
    int64_t limit = m->backend->max_conv_elems;
    return !limit || (p->trunk_operand <= limit && p->tile_operand <= limit);
}

/* Whether a plan fits the budget (where there is one) and the backend's convolutions. */
static int plan_fits(const wv_plan *p, const wv_model *m, const wv_options *o)
{
    return (!o->max_bytes || p->arena_bytes <= o->max_bytes) && operands_fit(p, m);
}

/* The backend's workspace, but no more than the largest conv input matrix (taps x cin per position)
 * of this plan, small decodes needing little, and no less than the backend's libraries ask for. */
static int64_t workspace_bytes(const wv_plan *p, const wv_model *m)
{
    int64_t largest = 0;
    for (int b = 0, c = -1; wv_next_conv(m, m->n_blocks, &b, &c);) {
        const wv_conv *cv = &m->blocks[b].conv[c];
        int64_t bytes = conv_positions(p, m, b) * cv->kt * cv->kh * cv->kw * cv->cin * (int64_t)m->backend->act_bytes;
        largest = bytes > largest ? bytes : largest;
    }
    if (largest < (int64_t)m->backend->min_workspace_bytes) largest = (int64_t)m->backend->min_workspace_bytes;
    return largest < (int64_t)m->backend->workspace_bytes ? largest : (int64_t)m->backend->workspace_bytes;
}

/* Room for the largest packed weights of a causal conv on a ring (whose taps the backend turns to
 * the ring's order), where the backend asks for it. */
static int64_t weight_scratch_bytes(const wv_model *m)
{
    int64_t largest = 0;
    if (!m->backend->causal_weight_scratch) return 0;
    for (int b = 0, c = -1; wv_next_conv(m, m->n_blocks, &b, &c);) {
        const wv_conv *cv = &m->blocks[b].conv[c];
        int on_ring = cv->kt > 1 && m->backend->cache_layout(cv) == WV_CACHE_RING;
        int64_t elems = on_ring ? m->backend->packed_weight_elems(cv) : 0;
        largest = elems > largest ? elems : largest;
    }
    return largest * (int64_t)m->backend->param_bytes;
}

/* Buffer id's size: elems of elem_bytes each, aligned; its name from WV_ARENA_BUFFERS. */
static void set_buffer(wv_plan *p, int id, int64_t elems, size_t elem_bytes)
{
    static const char *const names[] = {
#define WV_BUF_NAME(bid, phase, desc) #bid ": " desc,
        WV_ARENA_BUFFERS(WV_BUF_NAME)
#undef WV_BUF_NAME
    };
    p->buffers[id].name = id < WV_BUF_CACHE0 ? names[id] : "causal cache [frames][P][cin]";
    p->buffers[id].bytes = wv_align_up((size_t)elems * elem_bytes);
}

/* The conv whose causal cache is `slot`, and its block in *block; NULL when none is. */
static const wv_conv *cache_conv(const wv_model *m, int slot, int *block)
{
    for (int b = 0, c = -1; wv_next_conv(m, m->n_blocks, &b, &c);)
        if (m->blocks[b].conv[c].cache_slot == slot) {
            *block = b;
            return &m->blocks[b].conv[c];
        }
    return NULL;
}

static int buffer_phase(const wv_plan *p, const wv_model *m, int id)
{
    static const int phases[] = {
#define WV_BUF_PHASE(bid, phase, desc) phase,
        WV_ARENA_BUFFERS(WV_BUF_PHASE)
#undef WV_BUF_PHASE
    };
    int b;
    if (id < WV_BUF_CACHE0) return phases[id];
    if (!cache_conv(m, id - WV_BUF_CACHE0, &b)) return PHASE_KEEP;
    return b < p->trunk_end ? PHASE_TRUNK : PHASE_TILE;
}

const char *wv_plan_buffer_name(const wv_plan *p, const wv_model *m, int i, char *buf, size_t size)
{
    char conv[96];
    int b;
    const wv_conv *cv = i >= WV_BUF_CACHE0 ? cache_conv(m, i - WV_BUF_CACHE0, &b) : NULL;
    if (!cv || !wv_model_conv_name(m, cv->id, conv, sizeof conv))
        snprintf(buf, size, "%s", p->buffers[i].name);
    else
        snprintf(buf, size, "causal cache of %s: [%d frames][P][%d]", conv, wv_cache_frames(m->backend, cv), cv->cin);
    return buf;
}

/* The widest of the trunk's blocks, and its attention's width. */
static void trunk_widths(const wv_plan *p, const wv_model *m, int *trunk_c, int *attn_c)
{
    *trunk_c = *attn_c = 0;
    for (int b = 0; b < p->trunk_end; b++) {
        *trunk_c = imax(*trunk_c, imax(m->blocks[b].cin, m->blocks[b].cout));
        if (m->blocks[b].kind == WV_BLOCK_ATTN) *attn_c = m->blocks[b].cin;
    }
}

/* Places each segment's x, y and t in the tile scratch; returns the scratch's bytes. Segments
 * stack: while the later ones run (depth first), a segment holds only the x or y that feeds its
 * upsample, so the next one starts over its t. */
static size_t stack_segment_scratch(wv_plan *p, const wv_model *m)
{
    size_t ab = m->backend->act_bytes, scratch = 0, base = 0;
    for (int s = 0; s < p->n_segments; s++) {
        wv_segment *sg = &p->seg[s];
        size_t xy, end;
        segment_scratch(p, m, s, &sg->xy_elems, &sg->t_elems);
        xy = wv_align_up((size_t)sg->xy_elems * ab);
        sg->scratch_offset = base;
        end = base + 2 * xy + wv_align_up((size_t)sg->t_elems * ab);
        scratch = end > scratch ? end : scratch;
        base += 2 * xy;
    }
    return scratch;
}

static void size_cache_buffers(wv_plan *p, const wv_model *m)
{
    for (int b = 0, c = -1; wv_next_conv(m, m->n_blocks, &b, &c);) {
        const wv_conv *cv = &m->blocks[b].conv[c];
        if (cv->cache_slot < 0) continue;
        set_buffer(p, WV_BUF_CACHE0 + cv->cache_slot,
                   wv_cache_frames(m->backend, cv) * conv_positions(p, m, b) * cv->cin, m->backend->act_bytes);
    }
}

static void size_buffers(wv_plan *p, const wv_model *m)
{
    const wv_backend *be = m->backend;
    size_t ab = be->act_bytes;
    wv_grid full = {p->h, p->w, 1};
    int64_t P0 = wv_grid_positions(full), N = (int64_t)p->h * p->w;
    int C = m->blocks[p->trunk_end - 1].cout, attn_c, trunk_c;
    trunk_widths(p, m, &trunk_c, &attn_c);
    p->trunk_host_bytes = be->trunk_out_host && !p->stream_trunk ? (size_t)p->T * (size_t)(N * C) * ab : 0;
    set_buffer(p, WV_BUF_TRUNK_OUT, (p->trunk_host_bytes ? 0 : p->stream_trunk ? 1 : p->T) * N * C, ab);
    set_buffer(p, WV_BUF_TRUNK_X, P0 * trunk_c, ab);
    set_buffer(p, WV_BUF_TRUNK_Y, P0 * trunk_c, ab);
    set_buffer(p, WV_BUF_TRUNK_T, P0 * trunk_c, ab);
    set_buffer(p, WV_BUF_ATTN_IN, N * attn_c, ab);
    set_buffer(p, WV_BUF_ATTN_QKV, N * 3 * attn_c, ab);
    set_buffer(p, WV_BUF_ATTN_OUT, N * attn_c, ab);
    set_buffer(p, WV_BUF_WORKSPACE, workspace_bytes(p, m), 1);
    set_buffer(p, WV_BUF_WEIGHT_SCRATCH, weight_scratch_bytes(m), 1);
    /* scores: rows x N float32, then (score_bytes - 4) bytes a score of second scratch, aligned */
    set_buffer(p, WV_BUF_ATTN_SCORES,
               (int64_t)wv_align_up((size_t)p->attn_rows * (size_t)N * sizeof(float)) +
                   (int64_t)p->attn_rows * N * (int64_t)(be->score_bytes - sizeof(float)),
               1);
    set_buffer(p, WV_BUF_TILE_SCRATCH, (int64_t)(stack_segment_scratch(p, m) / ab), ab);
    p->step_out_bytes = (size_t)p->seg[p->n_segments - 1].frames_per_chunk * (size_t)p->core_x * (size_t)p->core_y * WV_RGB *
                        wv_output_item_bytes(p->output);
    set_buffer(p, WV_BUF_OUTPUT_STAGING, (int64_t)be->output_staging_copies * (int64_t)p->step_out_bytes, 1);
    size_cache_buffers(p, m);
    p->n_buffers = WV_BUF_CACHE0 + m->n_cache_slots;
}

/* The buffers of one phase placed one after another from `start`; returns where they end. */
static size_t place_phase(wv_plan *p, const wv_model *m, int phase, size_t start)
{
    for (int i = 0; i < p->n_buffers; i++)
        if (buffer_phase(p, m, i) == phase) {
            p->buffers[i].offset = start;
            start += p->buffers[i].bytes;
        }
    return start;
}

/* Offsets: the kept buffers first; then trunk work and tile work, which share memory unless the
 * trunk streams alongside the (single) tile. */
static void place_buffers(wv_plan *p, const wv_model *m)
{
    size_t kept_end = place_phase(p, m, PHASE_KEEP, 0);
    size_t trunk_end = place_phase(p, m, PHASE_TRUNK, kept_end);
    size_t tile_end = place_phase(p, m, PHASE_TILE, p->stream_trunk ? trunk_end : kept_end);
    p->trunk_out_bytes = p->buffers[WV_BUF_TRUNK_OUT].bytes;
    p->arena_bytes = trunk_end > tile_end ? trunk_end : tile_end;
}

static double conv_flops(const wv_conv *cv, int64_t positions, int64_t frames)
{
    return 2.0 * (double)positions * (double)frames * cv->cin * cv->cout * cv->kt * cv->kh * cv->kw;
}

/* Frames a tile segment processes over a sequence of T latent frames. */
static int64_t segment_frames_total(const wv_plan *p, int s, int T)
{
    return T <= 0 ? 0 : 1 + (int64_t)p->seg[s].frames_per_chunk * (T - 1);
}

/* The grid conv c of tile block b computes on in tile t, and the frames it does so over a sequence
 * of T latent frames (*frames). */
static wv_grid tile_conv_grid(const wv_plan *p, const wv_model *m, int b, int c, int t, int T, int64_t *frames)
{
    const wv_block *blk = &m->blocks[b];
    const wv_conv *cv = &blk->conv[c];
    int s = wv_block_segment(p, m, b);
    if (blk->kind == WV_BLOCK_UP3D && c == WV_UP_TIME_CONV) { /* all but frame 0 */
        *frames = segment_frames_total(p, s - 1, T) - 1;
        return wv_tile_grid(p, t, s - 1);
    }
    *frames = segment_frames_total(p, s, T);
    if (cv->subpixel) /* on the previous segment's grid, once per frame it makes */
        return wv_conv_out_grid(cv, wv_tile_grid(p, t, s - 1));
    return wv_tile_grid(p, t, s);
}

/* The work of conv c of tile block b summed over the tiles. A tile's grid height depends only on its
 * row and its width only on its column, so the sum over the grid is (sum of the rows' heights) x
 * (sum of the columns' widths): a walk along one row and one column, not over every tile. */
static double tiles_conv_flops(const wv_plan *p, const wv_model *m, int b, int c, int T)
{
    int64_t frames = 0, heights = 0, widths = 0;
    for (int ty = 0; ty < p->tiles_y; ty++) heights += tile_conv_grid(p, m, b, c, ty * p->tiles_x, T, &frames).h;
    for (int tx = 0; tx < p->tiles_x; tx++) widths += tile_conv_grid(p, m, b, c, tx, T, &frames).w;
    return conv_flops(&m->blocks[b].conv[c], heights * widths, frames);
}

static double count_flops(const wv_plan *p, const wv_model *m)
{
    double total = 0;
    int64_t N = (int64_t)p->h * p->w;
    for (int q = 0; q < p->n_seq; q++) {
        int T = p->seq_len[q];
        for (int b = 0, c = -1; wv_next_conv(m, p->trunk_end, &b, &c);)
            total += conv_flops(&m->blocks[b].conv[c], N, T);
        for (int b = p->trunk_end, c = -1; wv_next_conv(m, m->n_blocks, &b, &c);)
            total += tiles_conv_flops(p, m, b, c, T);
    }
    return total;
}

static void make_sequences(wv_plan *p, const wv_options *o)
{
    if (o->end_frame && p->T >= 1) {
        p->n_seq = 0;
        if (p->T > 1) {
            p->seq_start[p->n_seq] = 0;
            p->seq_len[p->n_seq] = p->T - 1;
            p->n_seq++;
        }
        p->seq_start[p->n_seq] = p->T - 1;
        p->seq_len[p->n_seq] = 1;
        p->n_seq++;
    } else {
        p->n_seq = 1;
        p->seq_start[0] = 0;
        p->seq_len[0] = p->T;
    }
    p->frames_out = 0;
    for (int q = 0; q < p->n_seq; q++) {
        p->seq_out[q] = p->frames_out;
        p->frames_out += (int)segment_frames_total(p, p->n_segments - 1, p->seq_len[q]);
    }
}

/* The attention's query chunk: 4M scores (up to the whole frame), and more where the trunk's
 * buffers leave room below the tiles' (they share memory unless the trunk streams beside a single
 * tile): a bigger chunk costs nothing there, and keeps a GPU's GEMMs full. */
#define ATTN_BASE_SCORES (1 << 22)

/* Where the buffers of a phase end in the arena. */
static size_t phase_end(const wv_plan *p, const wv_model *m, int phase)
{
    size_t end = 0;
    for (int i = 0; i < p->n_buffers; i++)
        if (buffer_phase(p, m, i) == phase && p->buffers[i].offset + p->buffers[i].bytes > end)
            end = p->buffers[i].offset + p->buffers[i].bytes;
    return end;
}

static void size_attention_chunk(wv_plan *p, const wv_model *m)
{
    int64_t N = (int64_t)p->h * p->w, per_row = N * (int64_t)m->backend->score_bytes;
    size_t room;
    int64_t fit;
    if (p->stream_trunk || p->attn_rows >= N) return;
    room = p->arena_bytes - phase_end(p, m, PHASE_TRUNK) + p->buffers[WV_BUF_ATTN_SCORES].bytes;
    /* the scores buffer rounds its two parts up to the arena alignment: room for both roundings */
    fit = room < 2 * WV_ARENA_ALIGN ? 0 : (int64_t)((room - 2 * WV_ARENA_ALIGN) / (size_t)per_row);
    /* a chunk's scores stay under 2^31 elements: one GEMM's matrix, which BLAS libraries index in int */
    if (fit > INT32_MAX / N) fit = INT32_MAX / N;
    if (fit <= p->attn_rows) return;
    p->attn_rows = (int)(fit < N ? fit : N);
    size_buffers(p, m);
    place_buffers(p, m);
}

static wv_status plan_with_trunk(wv_plan *p, const wv_model *m, int trunk_end, int T, int h, int w,
                                 const wv_options *o, wv_error *err)
{
    wv_status st;
    int64_t N;
    memset(p, 0, sizeof *p);
    if (T < 1 || h < 1 || w < 1)
        return wv_fail(err, WV_ERR_INVALID, "latents must have T, h, w >= 1 (got T=%d, h=%d, w=%d)", T, h, w);
    p->T = T;
    p->h = h;
    p->w = w;
    p->trunk_end = trunk_end;
    p->output = o->output;
    if ((st = make_segments(p, m, err))) return st;
    if (segment_frames_total(p, p->n_segments - 1, T) > INT32_MAX) /* frames are counted in int */
        return wv_fail(err, WV_ERR_INVALID, "latents of T=%d frames would decode to %lld frames, more than %d", T,
                       (long long)segment_frames_total(p, p->n_segments - 1, T), INT32_MAX);
    /* the attention indexes a frame's positions in int */
    if ((int64_t)h * p->out_scale > (1 << 20) || (int64_t)w * p->out_scale > (1 << 20) || (int64_t)h * w > INT32_MAX)
        return wv_fail(err, WV_ERR_INVALID,
                       "latent grid %dx%d is too large: a frame may be at most %d latent pixels on a side (%d output "
                       "pixels) and %d in all",
                       h, w, (1 << 20) / p->out_scale, 1 << 20, INT32_MAX);
    p->H = h * p->out_scale;
    p->W = w * p->out_scale;
    make_sequences(p, o);
    if ((st = make_tiles(p, o, err)) || (st = check_regions_fit(p, err))) return st;
    p->stream_trunk = p->n_tiles == 1;
    N = (int64_t)h * w;
    p->attn_rows = (int)(N >= ATTN_BASE_SCORES ? 1 : ATTN_BASE_SCORES / N < N ? ATTN_BASE_SCORES / N : N);
    size_buffers(p, m);
    place_buffers(p, m);
    size_attention_chunk(p, m);
    size_conv_operands(p, m);
    p->conv_flops = count_flops(p, m);
    return WV_OK;
}

/* Several tiles recompute each segment's halo, widest at the lowest resolution (15 latent pixels
 * around the first stage's blocks, 7 at the first upsample). The trunk then runs on to the first
 * upsample (the first stage's blocks on the whole frame, once) where that costs no memory: where
 * the plan with the longer trunk needs no more than the other (it never has more work). */
static wv_status plan_for_tiles(wv_plan *p, const wv_model *m, int T, int h, int w, const wv_options *o,
                                wv_error *err)
{
    wv_plan q;
    wv_status st = plan_with_trunk(p, m, m->trunk_end, T, h, w, o, err);
    if (st || p->n_tiles == 1 || m->trunk_end_long <= m->trunk_end) return st;
    if ((st = plan_with_trunk(&q, m, m->trunk_end_long, T, h, w, o, err))) {
        wv_plan_free(&q);
        wv_plan_free(p);
        return st;
    }
    if (q.arena_bytes > p->arena_bytes) {
        wv_plan_free(&q);
        return WV_OK;
    }
    wv_plan_free(p);
    *p = q;
    return WV_OK;
}

/* Tile size (output pixels) the plan effectively uses along its longer tiled axis. */
static int effective_tile(const wv_plan *p)
{
    return imax(p->core_x, p->core_y) + 2 * p->out_halo;
}

/* Tile size whose core splits `frame` output pixels into n even parts (multiples of the scale). */
static int even_tile(const wv_plan *p, int frame, int n)
{
    return ceil_div(ceil_div(frame, n), p->out_scale) * p->out_scale + 2 * p->out_halo;
}

/* The square tile that fits leaves thin tiles at the frame's edges. Splitting the frame evenly into
 * nx columns and ny rows (no more tiles than the square ones) often fits with less work: each cut
 * recomputes halos along its length, so columns cost less than rows on a wide frame. The fit with
 * the fewest FLOPs, then the fewest tiles, replaces *p. Tried only for a few tiles, where it matters. */
#define EVEN_SPLIT_MAX_TILES 64

static wv_status least_work_even_split(wv_plan *p, const wv_model *m, int T, int h, int w, const wv_options *o,
                                       wv_options *best, wv_error *err)
{
    int most = p->n_tiles, best_n = p->n_tiles, found = 0;
    double best_flops = p->conv_flops;
    wv_status st;
    if (p->n_tiles > EVEN_SPLIT_MAX_TILES) return WV_OK;
    for (int ny = 1; ny <= most; ny++)
        for (int nx = 1; nx * ny <= most; nx++) {
            wv_options trial = *best;
            wv_plan q;
            trial.tile_x = even_tile(p, p->W, nx);
            trial.tile_y = even_tile(p, p->H, ny);
            if ((o->tile_x > 0 && trial.tile_x > o->tile_x) || (o->tile_y > 0 && trial.tile_y > o->tile_y)) continue;
            if ((st = plan_for_tiles(&q, m, T, h, w, &trial, err))) {
                wv_plan_free(&q);
                return st;
            }
            if (plan_fits(&q, m, o) && (q.conv_flops < best_flops || (q.conv_flops == best_flops && q.n_tiles < best_n))) {
                best_n = q.n_tiles;
                best_flops = q.conv_flops;
                best->tile_x = trial.tile_x;
                best->tile_y = trial.tile_y;
                found = 1;
            }
            wv_plan_free(&q);
        }
    if (!found) return WV_OK;
    wv_plan_free(p);
    return plan_for_tiles(p, m, T, h, w, best, err);
}

/* Options asking for a square tile of `tile` px, no larger than asked on either axis. */
static wv_options square_tile(const wv_options *o, int tile)
{
    wv_options trial = *o;
    trial.tile_x = o->tile_x > 0 ? imin(o->tile_x, tile) : tile;
    trial.tile_y = o->tile_y > 0 ? imin(o->tile_y, tile) : tile;
    return trial;
}

/* Whether a plan failed for having more than WV_MAX_TILES tiles (make_tiles counts them first). */
static int too_many_tiles(const wv_plan *q, wv_status st, wv_error *err)
{
    if (!st || (int64_t)q->tiles_x * q->tiles_y <= WV_MAX_TILES) return 0;
    if (err) { /* not the answer: larger tiles are looked at next */
        err->code = WV_OK;
        err->msg[0] = '\0';
    }
    return 1;
}

/* The largest square tile from min_tile up to top (in steps of S) whose plan with the trunk ending
 * at block trunk_end fits the budget, or -1. With the trunk's end fixed, the arena grows with the
 * tile, so a binary search finds it; tiles too small to keep the frame within WV_MAX_TILES tiles
 * count as too small. */
static wv_status largest_fitting_tile(const wv_model *m, int trunk_end, int T, int h, int w, const wv_options *o,
                                      int min_tile, int top, int S, int *best, wv_error *err)
{
    int lo = 0, hi = (top - S - min_tile) / S;
    *best = -1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, tile = min_tile + mid * S;
        wv_options trial = square_tile(o, tile);
        wv_plan q;
        wv_status st = plan_with_trunk(&q, m, trunk_end, T, h, w, &trial, err);
        int too_small = too_many_tiles(&q, st, err), fits = !st && plan_fits(&q, m, o);
        wv_plan_free(&q);
        if (st && !too_small) return st;
        if (too_small) {
            lo = mid + 1;
        } else if (fits) {
            *best = tile;
            lo = mid + 1;
        } else {
            hi = mid - 1;
        }
    }
    return WV_OK;
}

/* Keeps in *least the plan of `trial` if it fits the backend's operands and needs less working memory
 * than the one kept (least->arena_bytes 0: none yet); *planned: whether its grid was within
 * WV_MAX_TILES tiles (else it was not planned). */
static wv_status keep_least(const wv_model *m, int T, int h, int w, const wv_options *trial, wv_plan *least,
                            int *planned, wv_error *err)
{
    wv_plan q;
    wv_status st = plan_for_tiles(&q, m, T, h, w, trial, err);
    wv_plan_free(&q); /* its scalars are all that is kept */
    *planned = !too_many_tiles(&q, st, err);
    if (!*planned) return WV_OK;
    if (!st && operands_fit(&q, m) && (!least->arena_bytes || q.arena_bytes < least->arena_bytes)) *least = q;
    return st;
}

/* The least working memory shrink_to_fit could reach (square tiles from min_tile up to top, in steps of
 * S) or the tiles asked, and that plan, in *least (least->arena_bytes 0: none within WV_MAX_TILES tiles
 * and the backend's operand limit). With the trunk's end fixed the arena and the operands grow with the
 * tile (the binary search of largest_fitting_tile rests on it), so of the tiled plans the smallest tile
 * within WV_MAX_TILES needs the least; the largest is planned too, as a tile covering the frame streams
 * its trunk. Planning every size between took seconds for large frames (each plan walks its tiles). */
static wv_status least_arena(const wv_model *m, int T, int h, int w, const wv_options *o, int min_tile, int top,
                             int S, wv_plan *least, wv_error *err)
{
    int planned = 0;
    wv_options largest = square_tile(o, top);
    wv_status st;
    memset(least, 0, sizeof *least);
    st = keep_least(m, T, h, w, o, least, &planned, err);
    for (int tile = min_tile; !st && tile <= top; tile += S) { /* grids beyond WV_MAX_TILES fail at once */
        wv_options trial = square_tile(o, tile);
        st = keep_least(m, T, h, w, &trial, least, &planned, err);
        if (planned) break;
    }
    return st ? st : keep_least(m, T, h, w, &largest, least, &planned, err);
}

static wv_status plan_within(wv_plan *p, const wv_model *m, int T, int h, int w, const wv_options *o, int explain,
                             wv_error *err);

/* The tile grid of plan q, for a message: "untiled" or "in 2x2 tiles of 656x376 px". */
static void describe_tiles(const wv_plan *q, char *buf, size_t size)
{
    if (q->n_tiles == 1)
        snprintf(buf, size, "untiled");
    else
        snprintf(buf, size, "in %dx%d tiles of %dx%d px", q->tiles_x, q->tiles_y, q->core_x + 2 * q->out_halo,
                 q->core_y + 2 * q->out_halo);
}

/* The status of an arena that does not fit: the memory it is made of ran out. */
static wv_status arena_nomem(const wv_model *m)
{
    return m->backend->device_memory ? WV_ERR_NOMEM_DEVICE : WV_ERR_NOMEM;
}

static wv_status budget_too_small(const wv_model *m, int T, int h, int w, const wv_options *o, size_t asked_bytes,
                                  int min_tile, int top, int S, wv_error *err)
{
    wv_plan q, at_least;
    wv_options least_budget = *o;
    wv_error unused;
    char tiles[64], trunk[192] = ""; /* trunk: the part that grows with T, where the arena holds it */
    char asked[WV_BYTES_TEXT], budget[WV_BYTES_TEXT], least[WV_BYTES_TEXT], trunk_bytes[WV_BYTES_TEXT];
    wv_status nomem = arena_nomem(m);
    wv_status st = least_arena(m, T, h, w, o, min_tile, top, S, &q, err);
    if (st) return st;
    wv_bytes_text(asked, sizeof asked, asked_bytes);
    wv_bytes_text(budget, sizeof budget, o->max_bytes);
    if (!q.arena_bytes) {
        wv_options smallest = square_tile(o, min_tile);
        st = plan_for_tiles(&q, m, T, h, w, &smallest, err);
        wv_plan_free(&q);
        if (too_many_tiles(&q, st, err))
            return wv_fail(err, nomem,
                           "the decode needs %s of working memory but the budget is %s, and tiles small enough "
                           "for it would number more than %d, the most a decode may have",
                           asked, budget, WV_MAX_TILES);
        if (st) return st;
        return wv_fail(err, WV_ERR_INVALID,
                       "even in the smallest tiles (%d px) a convolution has an operand of %lld elements, more than "
                       "the %lld the %s backend takes",
                       min_tile, (long long)q.tile_operand, (long long)m->backend->max_conv_elems, m->backend->name);
    }
    /* the plan made at the least budget: its tiles may be larger than those of q, in the same memory */
    least_budget.max_bytes = q.arena_bytes;
    if (!plan_within(&at_least, m, T, h, w, &least_budget, 0, &unused)) q = at_least;
    wv_plan_free(&at_least);
    describe_tiles(&q, tiles, sizeof tiles);
    if (!q.trunk_host_bytes && !q.stream_trunk) /* else it does not grow with T */
        snprintf(trunk, sizeof trunk, "; of it, %s hold the first blocks' whole-frame output for %d latent frame%s",
                 wv_bytes_text(trunk_bytes, sizeof trunk_bytes, q.trunk_out_bytes), T, T == 1 ? "" : "s");
    return wv_fail(err, nomem,
                   "the decode needs %s of working memory but the budget is %s; the least it can take is %s, "
                   "%s%s",
                   asked, budget, wv_bytes_text(least, sizeof least, least_budget.max_bytes), tiles, trunk);
}

/* Largest square tile, no larger than asked on either axis, whose plan fits the budget, searched for
 * each place the trunk may end (a trunk that takes the first stage makes the arena smaller for
 * tiles large enough to hold it, so one search over both would miss them); of the two, the plan with
 * less work, then the even split with the least. */
static wv_status shrink_to_fit(wv_plan *p, const wv_model *m, int T, int h, int w, const wv_options *o, int explain,
                               wv_error *err)
{
    size_t asked_bytes = p->arena_bytes;
    int S = p->out_scale, min_tile = 2 * p->out_halo + S, top = effective_tile(p), best = -1;
    int cuts[2] = {m->trunk_end, m->trunk_end_long}, n_cuts = m->trunk_end_long > m->trunk_end ? 2 : 1;
    double best_flops = 0;
    wv_options trial;
    wv_status st;
    wv_plan_free(p);
    for (int c = 0; c < n_cuts; c++) {
        int tile;
        wv_plan q;
        if ((st = largest_fitting_tile(m, cuts[c], T, h, w, o, min_tile, top, S, &tile, err))) return st;
        if (tile < 0) continue;
        trial = square_tile(o, tile);
        if ((st = plan_for_tiles(&q, m, T, h, w, &trial, err))) {
            wv_plan_free(&q);
            return st;
        }
        if (plan_fits(&q, m, o) && (best < 0 || q.conv_flops < best_flops)) {
            best = tile;
            best_flops = q.conv_flops;
        }
        wv_plan_free(&q);
    }
    if (best < 0)
        return explain ? budget_too_small(m, T, h, w, o, asked_bytes, min_tile, top, S, err)
                       : wv_fail(err, arena_nomem(m), "no tiling fits the budget");
    trial = square_tile(o, best);
    if ((st = plan_for_tiles(p, m, T, h, w, &trial, err))) return st;
    if ((st = least_work_even_split(p, m, T, h, w, o, &trial, err))) return st;
    p->shrunk_to_fit = 1;
    return WV_OK;
}

/* The plan of wv_plan_make; where no tiling fits, an error that explains (the least budget and its
 * plan: explain) or a short one (while finding that plan). */
static wv_status plan_within(wv_plan *p, const wv_model *m, int T, int h, int w, const wv_options *o, int explain,
                             wv_error *err)
{
    int64_t limit = m->backend->max_conv_elems;
    wv_status st = plan_for_tiles(p, m, T, h, w, o, err);
    if (st || plan_fits(p, m, o)) return st;
    if (limit && p->trunk_operand > limit) { /* the trunk runs on the whole frame, tiled or not */
        wv_plan_free(p);
        return wv_fail(err, WV_ERR_INVALID,
                       "a latent frame of %dx%d is too large for the %s backend: a convolution over it has an "
                       "operand of %lld elements, more than the %lld it takes",
                       h, w, m->backend->name, (long long)p->trunk_operand, (long long)limit);
    }
    return shrink_to_fit(p, m, T, h, w, o, explain, err);
}

wv_status wv_plan_make(wv_plan *p, const wv_model *m, int T, int h, int w, const wv_options *o, wv_error *err)
{
    memset(p, 0, sizeof *p);
    if (o->output != WV_OUT_UNIT && o->output != WV_OUT_RAW && o->output != WV_OUT_U8)
        return wv_fail(err, WV_ERR_INVALID, "unknown output type %d", (int)o->output);
    return plan_within(p, m, T, h, w, o, 1, err);
}

void wv_plan_free(wv_plan *p)
{
    free(p->tiles);
    p->tiles = NULL;
}
